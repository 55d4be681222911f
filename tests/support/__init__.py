"""Helpers shared by the test suites: external daemons and clients the tests drive."""
