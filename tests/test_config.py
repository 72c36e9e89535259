import pytest

from mcls.config import Config, ConfigError, load_config, parse_overrides


def test_overrides_are_typed():
    cfg = load_config(None, ["epochs=3", "lr=3e-4", "age_bounds=[25,60]", "tta=false", "backbone=mobilenetv2_100"])
    assert cfg.epochs == 3 and cfg.lr == 3e-4 and cfg.age_bounds == [25, 60] and cfg.tta is False


def test_on_and_off_mean_on_and_off_though_yaml_reads_them_as_booleans(tmp_path):
    assert load_config(None, ["channels_last=on"]).channels_last == "on"
    assert load_config(None, ["channels_last=off"]).channels_last == "off"
    path = tmp_path / "c.yaml"
    path.write_text("channels_last: off\n")
    assert load_config(path).channels_last == "off"
    with pytest.raises(ConfigError, match="backbone=True: expected a string"):  # only where on/off are choices
        load_config(None, ["backbone=on"])


def test_every_problem_is_listed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["epochs=many", "no_such_key=1", "tta=maybe"])
    msg = str(err.value)
    assert "epochs" in msg and "no_such_key" in msg and "tta" in msg and "valid keys" in msg


def test_bad_choice_is_reported():
    with pytest.raises(ConfigError, match="heads"):
        load_config(None, ["heads=triple"])
    with pytest.raises(ConfigError, match="train_old_age"):
        load_config(None, ["train_old_age=70"])


def test_yaml_round_trip(tmp_path):
    cfg = Config(epochs=2, loss="focal", loss_weights=[1.0, 0.5, 2.0])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Config.from_yaml(path) == cfg
    assert load_config(path, ["epochs=5"]).epochs == 5


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Config.from_yaml(path)
    path.write_text("batch_size: '32'\n")
    with pytest.raises(ConfigError, match="bad.yaml.*batch_size"):
        Config.from_yaml(path)


def test_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_smoke_shrinks_the_run():
    cfg = Config(smoke=True, epochs=10, img_size=224).resolved()
    assert cfg.epochs == 1 and cfg.img_size == 64


@pytest.mark.parametrize("keys", [{}, {"external_data": "x.csv"}, {"external_data": "x.csv", "external_training": "joint"},
                                  {"external_data": "x.csv", "external_training": "both"}])
def test_what_smoke_derives_is_never_judged_as_typed(keys):
    """`mcls train smoke=true ...` was refused: smoke shrank external_epochs, and the check read that as a key the
    user had set without external_data. The resolved config must pass the checks the run folder's copy meets."""
    cfg = Config(smoke=True, **keys).resolved()
    again = Config.from_dict(cfg.to_dict(), source="config.yaml")
    assert again.epochs == 1 and again.external_epochs == (1 if keys.get("external_training", "pretrain") != "joint"
                                                           and keys else Config().external_epochs)


def test_presets_load_by_name_and_unknown_names_list_them():
    cfg = load_config("large", ["epochs=2"])
    assert cfg.backbone == "tf_efficientnet_lite2" and cfg.epochs == 2
    with pytest.raises(ConfigError, match="presets: .*quality"):
        load_config("qualty")


def test_notebook_config_takes_unset_parameters_from_the_file(tmp_path, capsys):
    from mcls.notebook import notebook_config

    # the large preset sets img_size and epochs: a notebook leaving them at None must not undo them
    cfg = notebook_config("large", dict(img_size=None, epochs=3, lr=None, run_dir="runs/x"))
    assert cfg.img_size == 224 and cfg.epochs == 3 and cfg.lr == Config().lr and cfg.run_dir == "runs/x"
    shown = " ".join(capsys.readouterr().out.split())  # the columns are aligned with spaces
    assert "img_size = 224 (config_file)" in shown and "epochs = 3 (notebook)" in shown
    assert f"lr = {Config().lr!r} (default)" in shown
    assert "also set by" in shown and "backbone=" in shown  # the preset's keys the notebook does not declare
    assert notebook_config("", dict(img_size=None)).img_size == Config().img_size


def test_notebooks_meet_in_one_run_folder_unless_told_otherwise(tmp_path, capsys):
    from mcls.notebook import NOTEBOOK_RUN_DIR, notebook_config

    assert notebook_config("", dict(run_dir=None)).run_dir == NOTEBOOK_RUN_DIR
    assert "(default)" in capsys.readouterr().out
    given = tmp_path / "given.yaml"
    given.write_text("run_dir: runs/mine\n")
    assert notebook_config(given, dict(run_dir=None)).run_dir == "runs/mine"
    assert "(config_file)" in capsys.readouterr().out
