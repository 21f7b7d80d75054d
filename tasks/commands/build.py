"""Local frontend build commands."""

NPM_CI = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
VITE_BUILD = ["npm", "run", "build", "--", "--logLevel", "warn"]
