"""deploy/Dockerfile: lint, its builder stage replayed without Docker, and the final image's shape.

No Docker engine is available here, so the builder stage's RUN commands are executed verbatim
by ``sh`` in a temporary directory laid out like the image (the COPY sources copied in, the ARG
paths pointed into the directory). Offline and fast: pip may not reach an index, the wheel is
built without build isolation, and the fresh venv finds the dependencies through a ``.pth`` to
the project venv's packages (the project itself excluded), so only the built wheel is installed.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath

import pytest

from deploy.conftest import rendered_overlay
from deploy.dockerfile import Dockerfile, parse_dockerfile
from deploy.manifests import command_container, config_path, host_path, pod_spec
from deploy.tools import DEPLOY, REPO_ROOT, clean_env, require_tool, run
from proxy.cli import build_parser

DOCKERFILE = DEPLOY / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip install)\b")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    """deploy/Dockerfile, parsed."""
    return parse_dockerfile(DOCKERFILE)


def test_dockerfile_passes_hadolint() -> None:
    result = run([require_tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_image_is_slim_python_without_build_tools_and_unprivileged(
    dockerfile: Dockerfile,
) -> None:
    image = dockerfile.global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", image), image
    runtime = dockerfile.lineage("runtime")
    assert runtime[0].base == dockerfile.stage("builder").base, "the venv needs the same Python"
    for stage in runtime:
        for instruction in stage.all("RUN"):
            assert not BUILD_TOOLS.search(instruction.value), instruction.value
    uid, _, gid = dockerfile.inherited("runtime", "USER").value.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets runAsNonRoot verify it"
    assert gid.isdigit()


def test_entrypoint_and_cmd_are_a_valid_serve_command(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    assert runtime.last("ENTRYPOINT").exec_form() == ["saga-sidecar"]
    args = build_parser().parse_args(runtime.last("CMD").exec_form())
    assert args.command == "serve"
    copied = {dest for _, dest, _ in runtime.copies()}
    assert str(args.config) in copied, "the default config is baked into the image"


def test_baked_config_loads_its_baked_saga_files(dockerfile: Dockerfile, tmp_path: Path) -> None:
    runtime = dockerfile.stage("runtime")
    for sources, dest, _ in runtime.copies():
        target = host_path(tmp_path, dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / sources[0], target)
    config = PurePosixPath(str(build_parser().parse_args(runtime.last("CMD").exec_form()).config))
    env = {"REDIS_URL": "redis://r:6379/0", "DATABASE_URL": "postgresql://p/db", "ADMIN_TOKEN": "t"}
    result = run(
        [require_tool("saga-sidecar"), "check", "--config", str(host_path(tmp_path, config))],
        env=clean_env(env),
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1 saga definition)" in result.stdout


def test_kubernetes_mounts_its_config_where_the_image_expects_it(dockerfile: Dockerfile) -> None:
    cmd = build_parser().parse_args(dockerfile.stage("runtime").last("CMD").exec_form())
    _, sidecar = command_container(pod_spec(rendered_overlay("example").workload()), "serve")
    assert config_path(sidecar) == PurePosixPath(str(cmd.config))


def dependency_dir(tmp_path: Path) -> Path:
    """The project venv's installed packages, minus the project itself, as symlinks."""
    site = Path(sysconfig.get_paths()["purelib"])
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("saga_sidecar", "__editable__", "proxy", "saga_runner")):
            continue
        if name.endswith(".pth") or name == "__pycache__":
            continue
        (deps / name).symlink_to(entry)
    return deps


def prepare_venv(venv: Path, deps: Path) -> None:
    """An empty venv that sees ``deps`` (the builder's RUN then completes it)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ]
        ).stdout.strip()
    )
    (site / "_deploy_test_deps.pth").write_text(f"{deps}\n")


def replay_builder(dockerfile: Dockerfile, rootfs: Path) -> dict[str, Path]:
    """Run the builder stage's COPY and RUN instructions under ``rootfs``; returns its ARG paths."""
    builder = dockerfile.stage("builder")
    workdir = host_path(rootfs, builder.last("WORKDIR").value)
    workdir.mkdir(parents=True)
    for sources, dest, _ in builder.copies():
        for source in sources:
            target = workdir / dest
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(
                    REPO_ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(REPO_ROOT / source, target)
    paths = {name: host_path(rootfs, default) for name, default in builder.args().items()}
    prepare_venv(paths["VENV"], dependency_dir(rootfs.parent))
    env = clean_env({**builder.env(), **{k: str(v) for k, v in paths.items()}})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0")
    for instruction in builder.all("RUN"):
        result = run(["sh", "-c", instruction.value], env=env, cwd=workdir, timeout=120)
        assert result.returncode == 0, f"RUN {instruction.value}\n{result.stdout}\n{result.stderr}"
    return paths


@pytest.fixture(scope="module")
def built_venv(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv the builder stage produces, replayed here."""
    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    return replay_builder(dockerfile, rootfs)["VENV"]


def test_builder_installs_a_console_script_that_runs(built_venv: Path, tmp_path: Path) -> None:
    result = run([str(built_venv / "bin" / "saga-sidecar"), "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check", "migrate"):
        assert command in result.stdout
    where = run(
        [str(built_venv / "bin" / "python"), "-c", "import proxy; print(proxy.__file__)"],
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(built_venv)), "the code must come from the wheel"


def test_wheel_carries_every_package_data_file(built_venv: Path) -> None:
    site = next((built_venv / "lib").glob("python3.*/site-packages"))
    for package in ("proxy", "saga_runner"):
        for file in (REPO_ROOT / package).rglob("*"):
            if file.is_dir() or "__pycache__" in file.parts:
                continue
            relative = file.relative_to(REPO_ROOT)
            assert (site / relative).is_file(), f"{relative} is missing from the wheel"


def test_built_venv_migrates_a_database_with_the_packaged_sql(
    built_venv: Path, tmp_path: Path
) -> None:
    shutil.copy(DEPLOY / "kubernetes" / "base" / "sidecar.yaml", tmp_path / "sidecar.yaml")
    shutil.copy(
        DEPLOY / "kubernetes" / "base" / "sagas" / "payment.yaml", tmp_path / "payment.saga.yaml"
    )
    env = {
        "REDIS_URL": "redis://r:6379/0",
        "DATABASE_URL": "sqlite:///sagas.db",
        "ADMIN_TOKEN": "t",
    }
    result = run(
        [str(built_venv / "bin" / "saga-sidecar"), "migrate", "--config", "sidecar.yaml"],
        env=clean_env(env),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "applied migrations" in result.stdout
    assert (tmp_path / "sagas.db").is_file()


def test_runtime_stage_copies_the_builder_venv_onto_its_path(dockerfile: Dockerfile) -> None:
    venv = dockerfile.stage("builder").args()["VENV"]
    copies = [c for stage in dockerfile.lineage("runtime") for c in stage.copies() if c[2]]
    assert copies == [([venv], venv, "builder")]
    path = dockerfile.stage("base").env()["PATH"]
    assert path.split(":")[0] == f"{venv}/bin"


def test_demo_target_runs_the_demo_package(dockerfile: Dockerfile) -> None:
    demo = dockerfile.stage("demo")
    assert demo.last("ENTRYPOINT").exec_form() == ["python", "-m", "demo"]
    ((sources, dest, _),) = demo.copies()
    assert sources == ["demo"]
    assert PurePosixPath(dest).name == "demo"
    assert PurePosixPath(dest).parent == PurePosixPath(demo.last("WORKDIR").value)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (last matching pattern wins)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_admits_what_the_dockerfile_copies_and_nothing_local(
    dockerfile: Dockerfile,
) -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = {s for stage in dockerfile.stages for c in stage.copies() if not c[2] for s in c[0]}
    for source in sources:
        files = (
            [REPO_ROOT / source]
            if (REPO_ROOT / source).is_file()
            else (REPO_ROOT / source).rglob("*.*")
        )
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignored(relative, patterns), f"{relative} is left out"
    for local in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        ".run/sagas.db",
        "proxy/__pycache__/app.cpython-311.pyc",
        "config/sidecar.yaml",
    ):
        assert dockerignored(local, patterns), f"{local} would be sent to the daemon"
