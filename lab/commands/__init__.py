"""The lab's pure builders (the sandbox's stand-in images and files, the test hosts' containers):
no connection, nothing run."""
