"""The command line: click commands that parse options, call the library and render its results."""
