"""flows/stages.py, the one declaration of the stages, agrees with dvc.yaml: names and order, per-restorer
or not, the command, the params keys and the data it reads; and the CLI registers every stage from it."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.stages import BY_NAME, KEY, STAGES
from tests.conftest import REPO

CODE = ("src/", "ops/", "tasks/", "flows/")


def _dvc() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_table_has_dvc_yaml_stages_in_order() -> None:
    assert [s.name for s in STAGES] == list(_dvc()) and len(BY_NAME) == len(STAGES)


def test_each_row_matches_its_dvc_yaml_stage() -> None:
    for name, entry in _dvc().items():
        row, body = BY_NAME[name], entry.get("do", entry)
        assert row.per_restorer == ("foreach" in entry), name
        restorer = f" --restorer {KEY}" if row.per_restorer else ""
        assert body["cmd"].startswith(f"python -m flows {name}{restorer}"), (name, body["cmd"])
        assert list(row.params) == body.get("params", []), f"{name}: params differ from dvc.yaml"
        data = [d for d in body["deps"] if not d.startswith(CODE)]
        assert list(row.reads) == data, f"{name}: data deps differ from dvc.yaml"
        assert row.pool in ("cpu", "gpu")
        assert callable(row.load()) and row.load().name == name  # the flow exists and is the stage's


def test_upstream_resolves_the_restorer_and_the_roots() -> None:
    up = BY_NAME["adaptive"].upstream("d", "unet")
    assert up[:2] == [Path("d/models/unet"), Path("d/finetuned/unet")]
    assert BY_NAME["report"].upstream("d", reports_dir="r")[:2] == [Path("r/metrics.csv"), Path("r/examples")]


def test_cli_registers_every_stage_with_its_options() -> None:
    from flows.__main__ import app

    runner = CliRunner()
    for row in STAGES:
        out = runner.invoke(app, [row.name, "--help"])
        assert out.exit_code == 0, row.name
        assert ("--restorer" in out.output) == row.per_restorer, row.name
        assert row.help.split(" (")[0][:30] in " ".join(out.output.split()), row.name
    missing = runner.invoke(app, ["attack"])
    assert missing.exit_code == 2 and "--restorer" in missing.output


def test_fingerprint_reads_exactly_the_stage_params_keys(tmp_path: Path) -> None:
    """purify_train reads diffusion.max_timestep (a dotted key) but not diffusion.lr: only the first moves its
    resume key; a restorer's own keys move train_restorer's."""
    from tests.conftest import TINY
    from udcguard.config import params_from_dict

    base = params_from_dict(TINY)

    def fp(stage: str, **updates) -> str:
        data = {**TINY, **{k: {**TINY[k], **v} for k, v in updates.items()}}
        return BY_NAME[stage].fingerprint(params_from_dict(data), data_dir=tmp_path)

    ref = BY_NAME["purify_train"].fingerprint(base, data_dir=tmp_path)
    assert fp("purify_train") == ref
    assert fp("purify_train", diffusion={"max_timestep": base.diffusion.max_timestep + 1 if base.diffusion.max_timestep
                                        else 50}) != ref
    assert fp("purify_train", diffusion={"lr": base.diffusion.lr * 2}) == ref
    assert fp("train_restorer", train={"lr": base.train.lr * 2}) != BY_NAME["train_restorer"].fingerprint(
        base, data_dir=tmp_path)
