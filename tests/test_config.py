"""Pipeline files, pipeline text, presets and resolve_pipeline: round trips and error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
from config_files import ErrorCase, assert_located_error, config_error, write
from pydantic import Field

from sparsec.config import dump_pipeline, load_pipeline, parse_pipeline_text, pipeline_from_dict
from sparsec.config.presets import get_preset, list_presets
from sparsec.config.resolve import resolve_pipeline
from sparsec.errors import ConfigError
from sparsec.pipeline import (
    Analysis,
    PassResult,
    Pipeline,
    RewritePass,
    pass_dataclass,
    register,
    registry,
)


@register
@pass_dataclass
class DummyImportance(Analysis):
    name: ClassVar[str] = "test-dummy-importance"
    norm: Literal[1, 2] = 2

    def run(self, graph, am):  # type: ignore[no-untyped-def]
        return None


@register
@pass_dataclass
class DummyPrune(RewritePass):
    name: ClassVar[str] = "test-dummy-prune"
    ratio: Annotated[float, Field(ge=0, lt=1)] = 0.5
    min_channels: Annotated[int, Field(ge=1)] = 1
    ignore: tuple[str, ...] = ()
    verbose: bool = False
    label: str | None = None

    def run(self, graph, am):  # type: ignore[no-untyped-def]
        return PassResult(changed=False)


GOOD_TOML = """\
target = "cuda"
backend = "torch"

[[passes]]
name = "test-dummy-importance"
norm = 1

[[passes]]
name = "test-dummy-prune"
ratio = 0.3
ignore = ["fc*", "head.*"]
"""

GOOD_YAML = """\
target: cuda
backend: torch
passes:
  - name: test-dummy-importance
    norm: 1
  - name: test-dummy-prune
    ratio: 0.3
    ignore: [fc*, head.*]
"""

EXPECTED = Pipeline(
    [DummyImportance(norm=1), DummyPrune(ratio=0.3, ignore=("fc*", "head.*"))],
    target="cuda",
    backend="torch",
)


@pytest.mark.parametrize(
    ("name", "text"), [("p.toml", GOOD_TOML), ("p.yaml", GOOD_YAML), ("p.yml", GOOD_YAML)]
)
def test_load_good_file(tmp_path: Path, name: str, text: str) -> None:
    assert load_pipeline(write(tmp_path, name, text)) == EXPECTED


def test_dict_defaults_to_cpu_and_no_passes() -> None:
    assert pipeline_from_dict({}) == Pipeline([], target="cpu", backend=None)


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_file_to_text_and_back(tmp_path: Path, suffix: str) -> None:
    loaded = load_pipeline(
        write(tmp_path, "p" + suffix, GOOD_TOML if suffix == ".toml" else GOOD_YAML)
    )
    text = str(loaded)
    assert text == (
        "pipeline(test-dummy-importance{norm=1},"
        "test-dummy-prune{ratio=0.3,min_channels=1,ignore=[fc*,head.*],verbose=False,label=None})"
    )
    assert parse_pipeline_text(text, target="cuda", backend="torch") == loaded


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml"])
def test_dump_then_load(tmp_path: Path, suffix: str) -> None:
    pipeline = Pipeline(
        [DummyImportance(), DummyPrune(ratio=0.25, ignore=('q"x\\y',), verbose=True, label="café")],
        target="cpu",
    )
    path = tmp_path / ("out" + suffix)
    dump_pipeline(pipeline, path)
    assert load_pipeline(path) == pipeline
    assert load_pipeline(path).backend is None


def test_dump_empty_pipeline(tmp_path: Path) -> None:
    dump_pipeline(Pipeline([], backend="tvm"), tmp_path / "empty.toml")
    assert load_pipeline(tmp_path / "empty.toml") == Pipeline([], backend="tvm")


def test_text_forms() -> None:
    expected = Pipeline([DummyImportance(norm=1), DummyPrune(ratio=0.3, verbose=True, label="x y")])
    text = " test-dummy-importance{norm=1} , test-dummy-prune{ ratio = 0.3, verbose=true, label='x y' }"
    assert parse_pipeline_text(text) == expected
    assert parse_pipeline_text(f"pipeline({text})") == expected
    assert parse_pipeline_text("test-dummy-importance") == Pipeline([DummyImportance()])
    assert parse_pipeline_text("pipeline()") == Pipeline([])
    assert parse_pipeline_text("test-dummy-prune{ignore=[]}") == Pipeline([DummyPrune()])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("test-dummy-prune{ratio=0.3", "expected '}' to close the options"),
        ("test-dummy-prune{ratio 0.3}", "expected '=' after option name 'ratio'"),
        ("test-dummy-prune{ratio=}", "expected a value"),
        ("test-dummy-prune{ratio=1,ratio=2}", "option 'ratio' is given twice"),
        ("test-dummy-prune{name=x}", "'name' is not an option"),
        ("test-dummy-prune test-dummy-importance", "expected ',' between passes"),
        ("test-dummy-prune{label='x}", "unterminated string"),
    ],
)
def test_text_syntax_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="<pipeline text>:1:") as info:
        parse_pipeline_text(text)
    assert expected in str(info.value)
    assert "^" in str(info.value)


def test_text_semantic_error_has_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline_text("test-dummy-importance,test-dummy-prune{ratio=0.3,ratoi=1}")
    message = str(info.value)
    assert "<pipeline text>:1:50: passes[1].ratoi: unknown option 'ratoi'" in message
    assert "did you mean 'ratio'?" in message


TOML_CASES: dict[str, ErrorCase] = {
    "unknown pass": (
        """\
        target = "cpu"

        [[passes]]
        name = "test-dummy-importance"

        [[passes]]
        name = "test-dummy-prun"
        ratio = 0.5
        """,
        7,
        "passes[1].name",
        [
            "unknown pass 'test-dummy-prun'",
            "did you mean 'test-dummy-prune'?",
            "valid: ",
            "test-dummy-importance",
        ],
    ),
    "unknown option": (
        """\
        [[passes]]
        name = "test-dummy-importance"
        norm = 2

        [[passes]]
        name = "test-dummy-prune"
        raito = 0.5
        """,
        7,
        "passes[1].raito",
        [
            "unknown option 'raito' of pass 'test-dummy-prune'",
            "did you mean 'ratio'?",
            "valid: ignore, label",
        ],
    ),
    "ratio out of range": (
        """\
        [[passes]]
        name = "test-dummy-importance"
        [[passes]]
        name = "test-dummy-prune"
        min_channels = 2
        ratio = 1.5
        """,
        6,
        "passes[1].ratio",
        ["less than 1", "got 1.5", "expected a number in [0, 1)"],
    ),
    "wrong type": (
        """\
        [[passes]]
        name = "test-dummy-prune"
        ratio = "half"
        """,
        3,
        "passes[0].ratio",
        ["valid number", "got 'half'", "expected a number in [0, 1)"],
    ),
    "wrong literal": (
        """\
        [[passes]]
        name = "test-dummy-importance"
        norm = 3
        """,
        3,
        "passes[0].norm",
        ["got 3", "expected one of 1, 2"],
    ),
    "wrong list item": (
        """\
        [[passes]]
        name = "test-dummy-prune"
        ignore = ["fc", 3]
        """,
        3,
        "passes[0].ignore[1]",
        ["valid string", "expected a list of strings"],
    ),
    "unknown top-level key": (
        """\
        target = "cpu"
        backnd = "tvm"
        """,
        2,
        "backnd",
        [
            "unknown top-level key 'backnd'",
            "did you mean 'backend'?",
            "valid: backend, backend_options, passes, target",
        ],
    ),
    "bad target": (
        """\
        # a comment
        target = "gpu"
        """,
        2,
        "target",
        ["unknown target 'gpu'", "valid: cpu, cuda"],
    ),
    "bad backend": (
        """\
        backend = "onnxrt"
        """,
        1,
        "backend",
        ["unknown backend 'onnxrt'", "did you mean 'onnxruntime'?"],
    ),
    "top-level key after a pass table": (
        """\
        [[passes]]
        name = "test-dummy-prune"
        target = "cuda"
        """,
        3,
        "passes[0].target",
        ["unknown option 'target'", "top-level keys go before the first [[passes]] table"],
    ),
    "missing name": (
        """\
        [[passes]]
        ratio = 0.5
        """,
        1,
        "passes[0]",
        ["missing the pass 'name'", "valid passes: ", "test-dummy-prune"],
    ),
}


def to_yaml(toml_text: str) -> str:
    """The same config as YAML, written so each key keeps its TOML line number."""
    lines = []
    for line in textwrap.dedent(toml_text).splitlines():
        stripped = line.strip()
        if stripped == "[[passes]]":
            lines.append("- __start__: 1")
        elif "=" in stripped and not stripped.startswith("#"):
            key, value = (part.strip() for part in stripped.split("=", 1))
            lines.append(f"{key}: {value}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", list(TOML_CASES))
def test_toml_errors(tmp_path: Path, case: str) -> None:
    message = assert_located_error(tmp_path, "bad.toml", TOML_CASES[case])
    assert "pydantic" not in message and "For further information" not in message


YAML_CASES: dict[str, ErrorCase] = {
    "unknown pass": (
        """\
        target: cpu
        passes:
          - name: test-dummy-importance
          - name: test-dummy-prun
            ratio: 0.5
        """,
        4,
        "passes[1].name",
        ["unknown pass 'test-dummy-prun'", "did you mean 'test-dummy-prune'?"],
    ),
    "unknown option": (
        """\
        passes:
          - name: test-dummy-importance
          - name: test-dummy-prune
            raito: 0.5
        """,
        4,
        "passes[1].raito",
        ["unknown option 'raito'", "did you mean 'ratio'?"],
    ),
    "ratio out of range": (
        """\
        passes:
          - name: test-dummy-prune

            ratio: -0.1
        """,
        4,
        "passes[0].ratio",
        ["greater than or equal to 0", "expected a number in [0, 1)"],
    ),
    "wrong type": (
        """\
        passes:
          - name: test-dummy-prune
            min_channels: many
        """,
        3,
        "passes[0].min_channels",
        ["valid integer", "got 'many'", "expected an integer >= 1"],
    ),
    "wrong list item": (
        """\
        passes:
          - name: test-dummy-prune
            ignore:
              - fc
              - [nested]
        """,
        5,
        "passes[0].ignore[1]",
        ["valid string", "expected a list of strings"],
    ),
    "unknown top-level key": (
        """\
        target: cpu
        pases: []
        """,
        2,
        "pases",
        ["unknown top-level key 'pases'", "did you mean 'passes'?"],
    ),
    "bad target": (
        """\
        target: cdua
        """,
        1,
        "target",
        ["unknown target 'cdua'", "did you mean 'cuda'?"],
    ),
    "passes not a list": (
        """\
        target: cpu
        passes: test-dummy-prune
        """,
        2,
        "passes",
        ["must be a list of pass tables"],
    ),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_yaml_errors(tmp_path: Path, case: str) -> None:
    assert_located_error(tmp_path, "bad.yaml", YAML_CASES[case])


def test_all_problems_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """\
        target: gpu
        passes:
          - name: test-dummy-prune
            ratio: 2
          - name: nope
        """,
    )
    message = config_error(path)
    assert message.startswith(f"3 problems in {path}:")
    assert f"{path}:1: target:" in message
    assert f"{path}:4: passes[0].ratio:" in message
    assert f"{path}:5: passes[1].name:" in message


def test_dict_errors_have_no_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^<dict>: passes\[0\]\.ratio: input should be less than 1"
    ):
        pipeline_from_dict({"passes": [{"name": "test-dummy-prune", "ratio": 1.0}]})


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("bad.toml", 'target = "cpu"\n[[passes]\n', [":2: TOML syntax error"]),
        ("bad.yaml", "passes:\n  - name: x\n   bad: [1\n", [":3: YAML syntax error"]),
        ("bad.yaml", "- 1\n- 2\n", ["the top level must be a table", "got list"]),
    ],
)
def test_syntax_errors(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline file not found: .*missing.toml"):
        load_pipeline(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml, \.yml"):
        load_pipeline(tmp_path / "p.json")


@pytest.fixture
def standard_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real passes when they are registered; stand-ins with their options otherwise."""
    from sparsec.config import registered_passes

    registered = registered_passes()
    if "magnitude-importance" not in registered:
        monkeypatch.setitem(
            registry, "magnitude-importance", _stand_in(DummyImportance, "magnitude-importance")
        )
    if "prune-channels" not in registered:
        monkeypatch.setitem(registry, "prune-channels", _stand_in(DummyPrune, "prune-channels"))


def _stand_in(base: type, name: str) -> type:
    return pass_dataclass(
        type(base.__name__ + "StandIn", (base,), {"name": name, "__annotations__": {}})
    )


def test_presets(standard_passes: None) -> None:
    assert list(list_presets()) == [
        "structured-50",
        "structured-30",
        "macs-50",
        "taylor-50",
        "reconstruct-50",
        "unstructured-50",
        "nm-2-4",
        "block-90",
        "none",
    ]
    fifty = get_preset("structured-50")
    assert [p.name for p in fifty.passes] == ["magnitude-importance", "prune-channels"]
    assert fifty.passes[0].norm == 2  # type: ignore[attr-defined]
    assert fifty.passes[1].ratio == 0.5  # type: ignore[attr-defined]
    assert get_preset("structured-30").passes[1].ratio == 0.3  # type: ignore[attr-defined]
    assert get_preset("none") == Pipeline([])
    assert get_preset("none", target="cuda", backend="tvm") == Pipeline(
        [], target="cuda", backend="tvm"
    )


def test_unknown_preset() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown preset 'structured-40'; did you mean 'structured-50'\?"
    ):
        get_preset("structured-40")


def test_resolve(standard_passes: None, tmp_path: Path) -> None:
    assert resolve_pipeline(None) == get_preset("structured-50")
    assert resolve_pipeline("structured-30") == get_preset("structured-30")
    assert resolve_pipeline(EXPECTED) is EXPECTED
    assert resolve_pipeline([DummyImportance(norm=1)]) == Pipeline([DummyImportance(norm=1)])
    path = write(tmp_path, "p.toml", GOOD_TOML)
    assert resolve_pipeline(path) == EXPECTED
    assert resolve_pipeline(str(path)) == EXPECTED
    text = "test-dummy-importance{norm=1},test-dummy-prune{ratio=0.3,ignore=[fc*,head.*]}"
    assert resolve_pipeline(text, target="cuda", backend="torch") == EXPECTED
    assert resolve_pipeline("test-dummy-importance") == Pipeline([DummyImportance()])


def test_resolve_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", GOOD_YAML)
    assert resolve_pipeline(path, target="cpu").target == "cpu"
    assert resolve_pipeline(path, target="cpu").backend == "torch"
    assert resolve_pipeline(path, backend="tvm").backend == "tvm"
    assert resolve_pipeline("none", target="cuda") == Pipeline([], target="cuda")
    with pytest.raises(ConfigError, match="unknown target 'gpu'; did you mean"):
        resolve_pipeline("none", target="gpu")
    with pytest.raises(ConfigError, match="unknown backend 'ort'"):
        resolve_pipeline("none", backend="ort")


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"not a preset \(did you mean 'structured-50'\?.*pipeline text"
    ):
        resolve_pipeline("structured50")
    with pytest.raises(ConfigError, match="pipeline file not found: .*nowhere.yaml"):
        resolve_pipeline(str(tmp_path / "nowhere.yaml"))
    with pytest.raises(ConfigError, match=r"pipeline\[1\] is str, not a pass"):
        resolve_pipeline([DummyImportance(), "prune"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="got int"):
        resolve_pipeline(3)  # type: ignore[arg-type]
