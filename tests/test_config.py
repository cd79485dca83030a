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


def test_every_number_has_a_limit_and_absurd_values_fail_at_once():
    """2^63 - 1, 1e308 or 10^8 for any number ends in a config error at once: none builds lists for a minute,
    hangs or overflows first (model.levels = 10^8 ran into a MemoryError after 55 s)."""
    import time

    from dist_int.config import LIMITS, Config

    numbers = Config().numbers()
    assert set(numbers) == set(LIMITS), set(numbers) ^ set(LIMITS)
    for key, default in numbers.items():
        for value in ("9223372036854775807", "1e308", "100000000"):
            if isinstance(default, int) and "e" in value:
                continue
            started = time.perf_counter()
            try:
                cfg = load_config(None, [f"{key}={value}"])
            except ConfigError:
                pass
            else:  # accepted: then it is within the key's limit (rates and factors have none)
                assert LIMITS[key] is None or cfg.numbers()[key] <= LIMITS[key], (key, value)
            assert time.perf_counter() - started < 5, (key, value)  # a refusal, not a computation


@pytest.mark.parametrize("override, words", [("train.memory_mb=1e308", "train.memory_mb"),
                                             ("model.levels=100000000", "model.levels"),
                                             ("model.levels=9223372036854775807", "model.levels")])
def test_absurd_values_from_the_command_line_are_one_error_line(override, words):
    from conftest import run_train

    proc = run_train(["--config", "configs/hash.toml", override, "run.dir=/nonexistent/never-made"], timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert words in proc.stderr and "beyond its limit" in proc.stderr
