"""Recipes that ship inside the package (issue 17 item 6: a clean wheel install).

The regression pinned here: the demo found ``configs/demo/demo.yaml`` by walking up from its own source
file and ``train`` took only paths, so an installed wheel failed (``demo recipe not found:
.../lib/python3.11/configs/demo/demo.yaml``). The full check, a built wheel in a fresh venv running
demo / train / eval / serve, is ``make test-wheel`` (CI runs it after ``make test``); these are the
parts that are cheap enough for the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import parallel_r1
from parallel_r1 import recipes as bundled
from parallel_r1.cli import app
from parallel_r1.train.config import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PACKAGE = Path(parallel_r1.__file__).resolve().parent
EXPECTED = {"demo", "smoke", "qwen3_4b_seen", "qwen3_4b_unseen_s1", "qwen3_4b_unseen_s2", "qwen3_4b_scaffold"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_bundled_recipe_loads_by_name(name):
    assert set(bundled.names()) == EXPECTED
    by_name = load_recipe(name)
    assert load_recipe(f"{name}.yaml") == by_name
    assert by_name.stages and by_name.name == yaml.safe_load(bundled.path(name).read_text())["name"]


def test_a_file_wins_over_a_bundled_name_and_a_missing_one_names_the_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(bundled.path("smoke").read_text())
    raw["name"] = "my-own-smoke"
    Path("smoke").write_text(yaml.safe_dump(raw))
    assert load_recipe("smoke").name == "my-own-smoke"
    with pytest.raises(RecipeError, match=r"recipe file not found: nope\.yaml .*bundled recipe: demo, "):
        load_recipe("nope.yaml")


@pytest.mark.skipif(not (PACKAGE.parent.name == "src" and CONFIGS.is_dir()), reason="needs the repository checkout")
def test_bundled_recipes_are_links_to_configs_and_configs_has_no_unbundled_recipe():
    """One copy per recipe: a plain file in the package would drift from configs/, and a recipe added
    to configs/ without a link would be missing from the wheel."""
    links = sorted((PACKAGE / "recipes").glob("*.yaml"))
    for link in links:
        assert link.is_symlink(), f"{link} must be a relative link into configs/, not a copy"
        assert not os.path.isabs(os.readlink(link)) and link.resolve().is_relative_to(CONFIGS.resolve())
    targets = {link.resolve() for link in links}
    recipes = {p.resolve() for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.relative_to(CONFIGS).parts}
    assert recipes == targets, f"configs/ recipes without a link in {PACKAGE / 'recipes'}: {recipes - targets}"


def test_demo_and_train_find_recipes_without_the_repository(tmp_path):
    """The package copied alone (links followed, as a wheel holds it) and run from elsewhere."""
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "parallel_r1", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    # read_raw, not load_recipe: validating imports torch and transformers (10+ s in a fresh process);
    # loading by name is what the tests above check in this process.
    code = (
        "from parallel_r1 import recipes\n"
        "from parallel_r1.demo.recipes import DEFAULT_RECIPE, read_raw\n"
        "print(DEFAULT_RECIPE)\n"
        "print(recipes.resolve('smoke'))\n"
        "print(read_raw(DEFAULT_RECIPE)['name'], read_raw('demo')['name'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    demo, smoke, names = run.stdout.splitlines()
    assert Path(demo) == site / "parallel_r1" / "recipes" / "demo.yaml"
    assert Path(smoke) == site / "parallel_r1" / "recipes" / "smoke.yaml"
    assert names == "demo demo"


def test_recipes_command_lists_and_prints():
    runner = CliRunner()
    listed = runner.invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    for name in EXPECTED:
        assert f" {name} " in listed.output
    assert "Qwen/Qwen3-4B-Base" in listed.output and "stage0 (sft), sft (sft), rl (grpo)" in listed.output
    shown = runner.invoke(app, ["recipes", "smoke"])
    assert shown.exit_code == 0 and shown.output == bundled.path("smoke").read_text()
    missing = runner.invoke(app, ["recipes", "nope"])
    assert missing.exit_code == 2 and "bundled: demo, qwen3_4b_scaffold" in missing.output


def test_train_cli_resolves_a_name_before_anything_else(tmp_path, caplog):
    """The name reaches the recipe (its override is checked against smoke's keys), not a missing file."""
    args = ["train", "smoke", "--output", str(tmp_path / "run"), "--set", "no_such_key=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "bad recipe: no_such_key: unknown key; valid: model, stages" in caplog.text, caplog.text
    assert not (tmp_path / "run").exists()
