"""Prints where the browser test left its screenshots, even under pytest -q (as CTest runs it),
so that CTest's log (Testing/Temporary/LastTest.log) names them for passing runs too."""


def pytest_terminal_summary(terminalreporter):
    import test_browser
    for line in test_browser.SUMMARY:
        terminalreporter.write_line(line)
