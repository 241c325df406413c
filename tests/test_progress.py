"""Progress shows in a log: plain lines when stderr is not a terminal, a tqdm bar on one."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from tasks.common import LogProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_every_tenth_and_on_close() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(1000, "train discnet", "steps", stream=out, clock=clock)
    for _ in range(1000):
        clock.t += 0.164
        bar.update(1)
        bar.set_postfix(loss="0.0123")
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 100 ... 900, then the final line
    assert lines[1] == "[train discnet] 200/1000 steps (20 %), 33 s elapsed, ~2 min left, loss=0.0123"
    assert lines[-1] == "[train discnet] done 1000/1000 steps, 3 min in all, loss=0.0123"


def test_slow_steps_print_every_30_s_and_resume_counts_from_initial() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(1000, "finetune unet", "steps", initial=500, stream=out, clock=clock)
    clock.t = 31.0
    bar.update(10)  # 510: no new tenth, but 31 s since the start
    clock.t = 40.0
    bar.update(1)
    assert out.getvalue().splitlines() == ["[finetune unet] 510/1000 steps (51 %), 31 s elapsed, ~25 min left"]


def test_fast_loop_prints_the_last_line_only() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = LogProgress(6, "synthesize val", "scenes", stream=out, clock=clock)
    for _ in range(6):
        clock.t += 0.5
        bar.update(1)
    bar.close()
    assert out.getvalue() == "[synthesize val] done 6/6 scenes, 3 s in all\n"


def test_progress_picks_by_terminal() -> None:
    log = progress(4, "evaluate", stream=io.StringIO())
    assert isinstance(log, LogProgress)
    tty = _Tty()
    bar = progress(4, "evaluate", stream=tty)
    assert isinstance(bar, tqdm)
    bar.update(4)
    bar.close()
    assert "4/4" in tty.getvalue()
