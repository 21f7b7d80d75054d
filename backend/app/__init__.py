"""Reference Task Tracker API: the smallest real app the deploy toolkit ships and tests."""
