"""Progress bars: redrawn in place on a terminal, one line per interval in a file or a pipe."""

import io

from compressive_rt.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_one_line_per_redraw_and_no_carriage_return():
    log = io.StringIO()
    with progress_bar(file=log, interval_s=0, total=3, unit="step", desc="training") as bar:
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""
    assert [line.split(":")[0] for line in lines[:-1]] == ["training"] * len(lines[:-1])
    assert lines[0].startswith("training:   0%") and lines[-2].startswith("training: 100%")
    assert "3/3" in lines[-2]


def test_a_file_gets_no_line_between_intervals():
    log = io.StringIO()
    with progress_bar(file=log, interval_s=3600, unit="step", desc="training") as bar:
        for _ in range(10_000):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2  # the start and the state at the end
    assert lines[0].startswith("training: 0step") and lines[1].startswith("training: 10000step")


def test_a_terminal_gets_the_bar_redrawn_in_place():
    terminal = Terminal()
    with progress_bar(file=terminal, total=3, desc="training") as bar:
        bar.update(3)
    assert terminal.getvalue().count("\r") >= 2 and "\n" not in terminal.getvalue().rstrip("\n")
