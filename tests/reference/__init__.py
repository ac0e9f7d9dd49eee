"""The report's own code, as a reference for the tests and the benchmark."""
