"""Shared scenarios: data both the tests and the benchmarks use (not shipped in the wheel, like
`fakestripe/`). A benchmark never imports the test package, and the package carries no test data."""
