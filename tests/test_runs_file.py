"""The runs file of `--runs FILE`: text and JSON lines, defaults, every bad line at once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.pool.runs_file import MAX_BYTES, RunSpec, parse_runs, permission_warning, read_runs
from workers.common.errors import ConfigError

DEFAULT = Path("/etc/flywheel/config.toml")
SERVER = "http://localhost:8000"


def parse(text: str, **kwargs: object) -> list[RunSpec]:
    options: dict[str, object] = {
        "source": "runs.txt",
        "default_config": DEFAULT,
        "default_server": SERVER,
        "base_dir": Path("/data/batch"),
    }
    options.update(kwargs)
    return parse_runs(text, **options)  # type: ignore[arg-type]


def test_text_lines_defaults_and_overrides() -> None:
    specs = parse(
        "# nightly batch\n"
        "\n"
        "r1 tok-1\n"
        "   r2   tok-2   config=other.toml  server=https://fw.example.com/  gpus=2,3  # big one\n"
        "r3 tok3== config=~/c.toml gpus=GPU-aaaa\n"
    )
    assert [s.run_id for s in specs] == ["r1", "r2", "r3"]
    assert specs[0] == RunSpec("r1", "tok-1", DEFAULT, SERVER, None, 3)
    assert specs[1].config == Path("/data/batch/other.toml")
    assert specs[1].server == "https://fw.example.com"
    assert specs[1].gpus == ("2", "3")
    assert specs[1].line == 4
    # Base64 padding in a token is not mistaken for a key.
    assert specs[2].token == "tok3=="
    assert specs[2].config == Path("~/c.toml").expanduser()
    assert specs[2].gpus == ("GPU-aaaa",)


def test_json_lines_mix_with_text_lines() -> None:
    specs = parse('r1 tok-1\n{"run_id": "r2", "token": "tok-2"}\n  {"run_id": "r3", "token": "tok-3"}\n')
    assert [(s.run_id, s.token, s.line) for s in specs] == [("r1", "tok-1", 1), ("r2", "tok-2", 2), ("r3", "tok-3", 3)]


def test_json_line_values() -> None:
    specs = parse(
        '{"run_id": "r2", "token": "tok-2", "config": "/x/my config.toml", "gpus": [0, 1]}\n'
        '{"run_id": 17, "token": "tok-3", "server": "http://10.0.0.5:8000", "gpus": "4"}\n'
    )
    assert specs[0].config == Path("/x/my config.toml")
    assert specs[0].gpus == ("0", "1")
    assert specs[1].run_id == "17"
    assert specs[1].server == "http://10.0.0.5:8000"
    assert specs[1].gpus == ("4",)
    assert specs[1].config == DEFAULT


def test_every_bad_line_is_reported_with_its_number() -> None:
    text = (
        "r1 tok-1\n"
        "r2\n"                                    # 2: missing token
        "r1 tok-9\n"                              # 3: duplicate id
        "r4 tok-4 colour=blue\n"                  # 4: unknown key
        '{"run_id": "r5", "token": "tok-5", "gpu": [1]}\n'  # 5: unknown JSON key
        '{"run_id": "r6", "token": \n'            # 6: invalid JSON
        "r7 tok-7 gpus=\n"                        # 7: empty gpus
        "r8 tok-8 server=ftp://x\n"               # 8: bad server
        "r9 tok-9 config=a.toml config=b.toml\n"  # 9: key twice
        '{"run_id": "r10", "token": "tok 10"}\n'  # 10: whitespace in a token
        '["r11", "t11"]\n'                        # a text line with an odd id: fine
        "r12 tok-12 server=http://[::1\n"         # 12: a server --server would refuse
    )
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = caught.value.message
    lines = message.splitlines()
    assert "10 bad lines in runs.txt; no run was started" in lines[0]
    assert len(lines) == 11
    for number, needle in [
        (2, "has no token"),
        (3, "duplicate run id 'r1' (first on line 1)"),
        (4, "unknown key 'colour'"),
        (5, "unknown key 'gpu'"),
        (6, "not valid JSON"),
        (7, "gpus"),
        (8, "is not an http:// or https:// URL"),
        (9, "config= given twice"),
        (10, "token contains whitespace"),
        (12, "'http://[::1' is not a valid backend URL"),
    ]:
        assert any(line.startswith(f"runs.txt:{number}: ") and needle in line for line in lines), (
            number,
            message,
        )
    assert caught.value.exit_code == 2


def test_tokens_never_appear_in_errors_or_repr() -> None:
    secret = "SeCrEtToKeN123"
    with pytest.raises(ConfigError) as caught:
        parse(
            f"r1 {secret}\n"
            f"r1 {secret}\n"                      # duplicate
            f"r2 tok-0 config=a.toml {secret}\n"  # stray positional field
            f"r3 tok-0 {secret}Abc=xyz\n"          # looks like key=value, is not a key
            f'{{"run_id": "r4", "token": "{secret}", "{secret}": 1}}\n'
        )
    assert secret not in caught.value.message
    assert caught.value.message.count("\n") == 4
    spec = parse(f"r1 {secret}")[0]
    assert secret not in repr(spec)


def test_missing_config_without_default() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("r1 tok-1\nr2 tok-2 config=/c.toml\n", default_config=None)
    assert "runs.txt:1: run 'r1' has no config: add config=PATH or pass --config" in caught.value.message
    assert "runs.txt:2" not in caught.value.message


@pytest.mark.parametrize("run_id", ["../x", "a/b", ".."])
def test_run_ids_that_cannot_be_folder_names(run_id: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used as a folder name"):
        parse(f"{run_id} tok")


def test_empty_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="lists no runs"):
        parse("# only a comment\n\n")


def test_gpus_lists_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('r1 tok-0 gpus=0,0\n{"run_id": "r2", "token": "tok-0", "gpus": [true]}\nr3 tok-0 gpus=1,,2\n')
    message = caught.value.message
    assert "runs.txt:1: run 'r1': gpus lists a GPU twice" in message
    assert "runs.txt:2:" in message and "runs.txt:3:" in message


def test_read_runs_from_file_warns_when_others_can_read(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "runs.txt"
    path.write_text("r1 tok-1 config=cfg/config.toml\n")
    os.chmod(path, 0o644)
    specs, warnings = read_runs(str(path), io.StringIO(), default_config=None, default_server=SERVER)
    assert specs[0].config == tmp_path / "cfg" / "config.toml"
    assert len(warnings) == 1
    assert "readable by other users" in warnings[0] and "chmod 600" in warnings[0]
    assert "tok-1" not in warnings[0]

    os.chmod(path, 0o600)
    _, warnings = read_runs(str(path), io.StringIO(), default_config=None, default_server=SERVER)
    assert warnings == []


def test_read_runs_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    specs, warnings = read_runs(
        "-", io.StringIO("r1 tok-1 config=c.toml\n{\"run_id\": \"r2\", \"token\": \"tok-2\"}\n"),
        default_config=DEFAULT, default_server=SERVER,
    )
    assert [s.config for s in specs] == [tmp_path / "c.toml", DEFAULT]
    assert warnings == []


def test_read_runs_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_runs(str(tmp_path / "nope.txt"), io.StringIO(), default_config=DEFAULT, default_server=SERVER)
    with pytest.raises(ConfigError, match="is a folder"):
        read_runs(str(tmp_path), io.StringIO(), default_config=DEFAULT, default_server=SERVER)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"r1 tok-\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_runs(str(bad), io.StringIO(), default_config=DEFAULT, default_server=SERVER)
    errors = tmp_path / "errors.txt"
    errors.write_text("r1\n")
    with pytest.raises(ConfigError, match=rf"{errors}:1: run 'r1' has no token"):
        read_runs(str(errors), io.StringIO(), default_config=DEFAULT, default_server=SERVER)


def test_permission_warning_only_for_regular_files() -> None:
    assert permission_warning(Path("/dev/stdin"), 0o020644) is None
    assert permission_warning(Path("x"), 0o100600) is None
    assert permission_warning(Path("x"), 0o100640) is not None


# ------------------------------------------------------- lines and files that cannot be read


@pytest.mark.parametrize("token", ["tok\x00x", "tok\x01x", "tok\u20acx", "tok\ud800x"])
def test_tokens_an_http_header_cannot_carry_are_bad_lines(token: str) -> None:
    line = json.dumps({"run_id": "r2", "token": token}) + "\n"
    with pytest.raises(ConfigError) as caught:
        parse(f"r1 tok-1\n{line}")
    message = caught.value.message
    assert message.startswith("1 bad line in runs.txt") and "runs.txt:2: run 'r2': " in message
    assert "token" in message.partition("runs.txt:2:")[2] and token not in message


def test_a_json_line_nested_too_deeply_is_a_bad_line() -> None:
    with pytest.raises(ConfigError, match=r"runs\.txt:2: not valid JSON"):
        parse("r1 tok-1\n" + "{" + '"a":{' * 100_000 + "}" * 100_001 + "\n")


def test_the_real_command_refuses_bad_runs_input(env: Any) -> None:
    deep = "{" + '"a":{' * 100_000 + "}" * 100_001 + "\n"
    result = env.run("--runs", "-", "--config", str(env.config()), stdin=deep)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "<stdin>:1: not valid JSON" in result.stderr

    runs = env.tmp / "runs.txt"
    runs.write_bytes(b"r1 tok-1234\x00x\n")
    os.chmod(runs, 0o600)
    result = env.run("--runs", str(runs), "--config", str(env.config()))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{runs}:1: run 'r1': " in result.stderr and "tok-1234" not in result.stderr

    # With standard input closed, as some service managers start a program.
    closed = subprocess.run([sys.executable, "-m", "supervisor", "--runs", "-", "--config", str(env.config())],
                            env=env.vars, capture_output=True, text=True, timeout=90, cwd=env.tmp,
                            stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert closed.returncode == 2 and "standard input is closed" in closed.stderr, closed.stderr


def test_runs_files_that_are_not_regular_files_or_too_big(env: Any) -> None:
    fifo = env.tmp / "runs.fifo"
    os.mkfifo(fifo)
    big = env.tmp / "big.txt"
    with big.open("wb") as handle:
        handle.truncate(MAX_BYTES + 1)
    for path, needle in [("/dev/zero", "a character device"), (str(fifo), "a FIFO"),
                         (str(big), "larger than 16 MiB")]:
        # The bound on the wait is the test's own: before, the FIFO hung and /dev/zero filled memory.
        result = env.run("--runs", path, "--config", str(env.config()), timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (path, result.stderr)
        assert f"runs file {path} " in result.stderr and needle in result.stderr, result.stderr
    oversized = io.StringIO("r1 tok-1\n" + "#" * MAX_BYTES)
    with pytest.raises(ConfigError, match="more than 16 MiB"):
        read_runs("-", oversized, default_config=DEFAULT, default_server=SERVER)
