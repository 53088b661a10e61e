"""latlab: the command line and public API."""
