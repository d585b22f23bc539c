"""A researcher's fork trains what was edited. In a copy of the package, one edit at a time to the
paper's code; a short run with the default settings takes the losses of the same fork's
--no-fast-kernels run, and its first lines and config.json say which fast form was set aside, if
any. Each fork is imported in this process under a name of its own."""
import csv
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import SMALL

PACKAGE = Path(__file__).resolve().parents[1] / "capsnet"
FAST = {"conv1_primary": "fast", "routing": "fast"}
SQUASH = ("squashing.py",
          "    return s * (squared_norm / ((1.0 + squared_norm) * torch.sqrt(squared_norm + EPS)))",
          "    norm = torch.sqrt(squared_norm + EPS)  # Efficient-CapsNet's: (1 - 1/e^|s|) s/|s|\n"
          "    return s * ((1 - torch.exp(-norm)) / norm)")
# A fork that keeps a derivative of the old squash written by hand beside the new squash
STALE_BACKWARD = ("routing/dynamic.py",
                  "            grad_s = pulled_back(*traced(squash, sums[t]), grad_v)  # dL/ds_j",
                  "            q = (sums[t] * sums[t]).sum(dim=-1, keepdim=True)\n"
                  "            r = torch.sqrt(q + 1e-8)\n"
                  "            slope = 1.0 / ((1.0 + q) ** 2 * r) - q / (2.0 * (1.0 + q) * r ** 3)\n"
                  "            grad_s = q / ((1.0 + q) * r) * grad_v + 2.0 * sums[t] * (\n"
                  "                sums[t] * grad_v).sum(dim=-1, keepdim=True) * slope")
EDITS = {  # name: (edits as (file, text, replacement), the fast forms kept)
    "unedited": ((), FAST),
    "comment-and-renamed-local": ((
        ("routing/dynamic.py", "        votes_inner = votes.detach() if detach_inner else votes\n",
         "        # the votes the inner iterations read\n"
         "        inner = votes.detach() if detach_inner else votes\n"),
        ("routing/dynamic.py", "            s = weighted_sums(coupling, votes if last else votes_inner)",
         "            s = weighted_sums(coupling, votes if last else inner)"),
        ("routing/dynamic.py", "                agreement = torch.bmm(votes_inner, v.view(",
         "                agreement = torch.bmm(inner, v.view(")), FAST),
    "squash": ((SQUASH,), FAST),
    "couple": ((("routing/dynamic.py", "        return logits.softmax(dim=1)",
                 "        return (2 * logits).softmax(dim=1)  # a temperature of 1/2"),), FAST),
    "primary-capsules-forward": ((
        ("model.py", "        return self.capsules(self.conv(features).permute(0, 2, 3, 1))",
         "        return self.capsules(self.conv(2 * features).permute(0, 2, 3, 1))"),),
        {**FAST, "conv1_primary": "as written"}),
    "primary-capsules-capsules": ((
        ("model.py", "        return squash(u) if self.layer_norm is None else self.layer_norm(u)",
         "        return squash(2 * u) if self.layer_norm is None else self.layer_norm(u)"),), FAST),
    "dynamic-routing": ((
        ("routing/dynamic.py",
         "            coupling = couple(logits, leaky)  # c_ij: softmax over the output capsules",
         "            coupling = logits.softmax(dim=2)  # c_ij: over the input capsules"),),
        {**FAST, "routing": "as written"}),
    "squash-with-a-stale-backward": ((SQUASH, STALE_BACKWARD), {**FAST, "routing": "as written"}),
}


def make_fork(folder: Path, name: str, edits) -> str:
    """A copy of the package as the package `capsnet_<name>` in `folder`, edited."""
    package = "capsnet_" + name.replace("-", "_")
    shutil.copytree(PACKAGE, folder / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt", "*.png"))
    for file, text, replacement in edits:
        path = folder / package / file
        source = path.read_text()
        assert source.count(text) == 1, (file, text)
        path.write_text(source.replace(text, replacement))
    return package


def run(package: str, args: list[str], run_dir: Path, capsys) -> tuple[list, dict, list[str]]:
    """The fork's `python -m capsnet.train`: metrics.csv's losses and accuracies, config.json's
    kernels, and the lines it printed before its first epoch."""
    command = importlib.import_module(f"{package}.train")
    assert command.main(args + ["--run-dir", str(run_dir)]) == 0
    with open(run_dir / "metrics.csv") as f:
        rows = [float(row[k]) for row in csv.DictReader(f)
                for k in ("train_loss", "test_loss", "test_accuracy")]
    printed = capsys.readouterr().out.splitlines()
    kernels = json.loads((run_dir / "config.json").read_text())["kernels"]
    return rows, kernels, [line for line in printed if not line.startswith("epoch")]


@pytest.mark.parametrize("name", EDITS)
def test_a_fork_trains_what_was_edited_and_says_which_fast_form_it_set_aside(
        name, data_root, tmp_path, capsys):
    edits, kept = EDITS[name]
    package = make_fork(tmp_path / "fork", name, edits)
    args = ["--data-dir", str(data_root), "--no-download", "--epochs", "1", "--batch-size", "32",
            "--train-samples", "96", "--test-samples", "48", "--no-visdom",
            *SMALL]
    sys.path.insert(0, str(tmp_path / "fork"))
    try:
        rows, kernels, lines = run(package, args, tmp_path / "default", capsys)
        assert kernels == kept
        set_aside = [form for form, how in kept.items() if how == "as written"]
        warnings = [line for line in lines if " set aside: " in line]
        assert len(warnings) == len(set_aside)
        for form, line in zip(set_aside, warnings):
            assert line.startswith(f"fast {'routing' if form == 'routing' else 'conv1/PrimaryCaps'}"
                                   " set aside: ")
        if edits:
            written, _, _ = run(package, args + ["--no-fast-kernels"], tmp_path / "written",
                                capsys)
            # bf16 (--precision auto on a CPU with bf16 units) parts the two forms by 2e-4;
            # a fast form kept against an edit parts them by 1-3% (the commit says which)
            assert rows == pytest.approx(written, rel=2e-3)
    finally:
        sys.path.remove(str(tmp_path / "fork"))
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]
