import pytest

from dist_int.config import ConfigError, load_config, parse_overrides

CONFIGS = ["configs/demo.toml", "configs/image.toml", "configs/megapixel.toml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    from conftest import ROOT

    cfg = load_config(ROOT / path)
    assert cfg.model.layers >= 2


def test_image_config_has_paper_settings():
    from conftest import ROOT

    cfg = load_config(ROOT / "configs/image.toml")
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.w0) == (6, 256, 30.0)
    assert (cfg.optim.lr, cfg.optim.lr_min, cfg.train.steps) == (1e-3, 1e-6, 5000)
    assert (cfg.teacher.ratio, cfg.teacher.ratio_schedule, cfg.teacher.interval_schedule) == \
        (0.2, "step", "incremental")


def test_overrides_are_typed():
    cfg = load_config(None, ["run.dir=runs/x", "train.steps=7", "teacher.strategy=uniform",
                             "teacher.ratio=0.5", "model.hidden=32", "model.layers=3",
                             "checkpoint.every=3", "seed=4", "signal.path=a b.png", "optim.lr=1"])
    assert cfg.run.dir == "runs/x" and cfg.train.steps == 7 and cfg.teacher.strategy == "uniform"
    assert cfg.teacher.ratio == 0.5 and cfg.model.hidden == 32 and cfg.seed == 4
    assert cfg.signal.path == "a b.png" and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_unknown_key_names_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["teacher.rato=0.3"])
    assert "teacher.rato" in str(e.value) and "teacher.ratio" in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("teacher.ratio=1.7", "teacher.ratio"),
    ("teacher.ratio=0", "teacher.ratio"),
    ("train.steps=0", "train.steps"),
    ("teacher.strategy=best", "teacher.strategy"),
    ("teacher.ratio_schedule=zigzag", "teacher.ratio_schedule"),
    ("train.steps=many", "integer"),
    ("train.compile=1", "true or false"),
    ("train.precision=fp16", "train.precision must be one of"),
    ("signal.target_range=centred", "signal.target_range must be one of"),
    ("train.bf16=true", 'replaced: set train.precision = "bf16"'),
    ("model", "section.key=value"),
    ("model=3", "section"),
])
def test_bad_values_are_rejected(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert words in str(e.value)


def test_toml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps=3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trian]\nsteps=3\n")
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(unknown)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# réglages\n[train]\nsteps = 3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin1)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
