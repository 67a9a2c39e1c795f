"""``reprlab cluster smoke``: the cluster launcher's config used for real, on one machine.

A throwaway user, an SSH server on 127.0.0.1 and a local-provider config derived from
``docs/cluster-local.yaml`` (whose setup and start commands are those of the AWS ``cluster.yaml``,
line for line): ``ray up -y``, a short training run and a tiny sweep submitted with ``ray exec``
the way ``docs/cluster.md`` tells users to, their run directories and the head's dashboard
(jobs API and Prometheus metrics) checked, ``ray down -y``, and everything it started removed.
Each step prints one line; a failed step is named, with the log it keeps.

By default the head's venv sees this interpreter's installed packages (a ``.pth`` line), so the
setup command's ``pip install -e`` only installs the project itself; ``--full`` gives the head an
empty venv and lets the setup commands install everything from the package index, as on a new
machine. Ray's SSH has no port option: the server listens on 127.0.0.1:22, and the run needs
root (it creates the user and starts ``sshd``).
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reprlab.platform.core.errors import ReprlabError

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = ROOT / "docs" / "cluster-local.yaml"
# The head's ports in the shared start commands (GCS, object manager, dashboard, metrics) and the
# dashboard agent's default: another Ray on this machine holding one would break the head.
RAY_PORTS = (6379, 8076, 8265, 8080, 52365)
TINY = ["data.image_size=16", "data.glyphs.size=16", "data.glyphs.renders_per_face=1", "data.classes_per_batch=16",
        "data.samples_per_class=2", "data.iterations_per_epoch=4", "model.width=8", "model.embed_dim=16",
        "train.epochs=2"]
BROKEN_COMMAND = "reprlab-smoke-broken-on-purpose"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SmokeFailed(ReprlabError):
    """A step of the smoke run failed; the message names it and the log it kept."""


@dataclass
class Smoke:
    work: Path
    full: bool = False
    break_setup: bool = False
    keep: bool = False
    user: str = field(default_factory=lambda: f"reprlab-smoke-{os.getpid()}")
    cluster: str = field(default_factory=lambda: f"reprlab-smoke-{os.getpid()}")
    timeout_s: float = 1800.0
    _started: list[str] = field(default_factory=list)
    _step: str = "prerequisites"

    # ---- paths -----------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.work / "home"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def config(self) -> Path:
        return self.work / "cluster.yaml"

    @property
    def env(self) -> dict[str, str]:
        """The launcher's environment: its state files and config cache in the work directory."""
        tmp = self.work / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}

    # ---- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        steps = [("prerequisites", self.prerequisites), ("ssh", self.ssh), ("config", self.write_config),
                 ("ray up", self.ray_up), ("train", self.train), ("tune", self.tune),
                 ("dashboard", self.dashboard), ("ray down", self.ray_down)]
        if self.break_setup:
            steps = steps[:4]
        began = time.perf_counter()
        ok = False
        try:
            for i, (name, step) in enumerate(steps, 1):
                self._step = name
                t0 = time.perf_counter()
                detail = step()
                print(f"[smoke] {i}/{len(steps)} {name}: ok ({time.perf_counter() - t0:.0f} s) {detail}", flush=True)
            ok = True
        finally:
            self.cleanup(ok)
        print(f"[smoke] passed in {time.perf_counter() - began:.0f} s ({'full' if self.full else 'reduced'} install)",
              flush=True)

    def fail(self, what: str, log: Path | None = None) -> SmokeFailed:
        kept = f" (log kept: {log})" if log is not None else ""
        return SmokeFailed(f"cluster smoke: step '{self._step}' failed: {what}{kept}")

    def sh(self, args: list[str], log: str, *, as_user: bool = False, check: bool = True,
           env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a command with its output in logs/<log>; a non-zero exit is this step's failure."""
        if as_user:
            args = ["runuser", "-u", self.user, "--", *args]
        path = self.logs / log
        with path.open("a") as out:
            out.write(f"$ {' '.join(args)}\n")
            out.flush()
            try:
                done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                                      timeout=timeout or self.timeout_s, cwd=self.work, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise self.fail(f"`{' '.join(args[:3])} ...` still running after {timeout or self.timeout_s:.0f} s",
                                path) from None
        if check and done.returncode != 0:
            raise self.fail(f"`{' '.join(args[:3])} ...` exited with status {done.returncode}", path)
        return done

    # ---- steps -----------------------------------------------------------------------------------
    def prerequisites(self) -> str:
        if os.geteuid() != 0:
            raise self.fail("needs root: it creates a throwaway user and starts sshd on 127.0.0.1:22 "
                            "(Ray's SSH has no port option)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # the throwaway user's home lies inside
        closed = [str(d) for d in self.work.parents if not os.stat(d).st_mode & 0o001]
        if closed:
            raise self.fail(f"{closed[0]} is closed to other users, so the throwaway user could not reach its "
                            "home inside the work directory: pass a --workdir under /tmp")
        self.logs.mkdir(exist_ok=True)
        installed = []
        missing = [pkg for pkg, exe in (("openssh-server", "/usr/sbin/sshd"), ("rsync", "rsync"))
                   if shutil.which(exe) is None]
        if missing:
            if shutil.which("apt-get") is None:
                raise self.fail(f"{', '.join(missing)} missing and no apt-get to install them")
            self.sh(["apt-get", "install", "-y", "-q", *missing], "apt.log",
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
            installed = missing
        needed = (22,) if self.break_setup else (22, *RAY_PORTS)  # a broken setup starts no Ray
        busy = [port for port in needed if not _port_free(port)]
        if busy:
            raise self.fail(f"port(s) {', '.join(map(str, busy))} in use on this machine (sshd needs 22 on "
                            "127.0.0.1; the head's Ray needs the others): stop what holds them")
        return f"sshd and rsync {'installed (' + ', '.join(installed) + ')' if installed else 'present'}; ports free"

    def ssh(self) -> str:
        if subprocess.run(["id", self.user], capture_output=True).returncode == 0:
            raise self.fail(f"user {self.user} exists already")
        self.sh(["useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/bash", self.user],
                "ssh.log")
        self._started.append("user")
        self.sh(["usermod", "-p", "*", self.user], "ssh.log")  # unlocked, no password: key only
        for name in ("key", "host_key"):
            self.sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work / name)], "ssh.log")
        dot_ssh = self.home / ".ssh"
        dot_ssh.mkdir(mode=0o700, exist_ok=True)
        (dot_ssh / "authorized_keys").write_text((self.work / "key.pub").read_text())
        # The head's Ray (and torch's caches) keep their files in the user's home: no other Ray on
        # this machine (a test session, a user's own cluster) shares /tmp/ray with it, and the
        # cleanup removes them.
        with (self.home / ".bashrc").open("a") as rc:
            rc.write('\nexport TMPDIR="$HOME/tmp" RAY_TMPDIR="$HOME/tmp"; mkdir -p "$TMPDIR"\n')
        self.sh(["chown", "-R", f"{self.user}:", str(self.home)], "ssh.log")
        (self.work / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", "Port 22", f"HostKey {self.work / 'host_key'}",
            f"PidFile {self.work / 'sshd.pid'}", "AuthorizedKeysFile .ssh/authorized_keys",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            f"AllowUsers {self.user}", "StrictModes no", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)
        self.sh(["/usr/sbin/sshd", "-f", str(self.work / "sshd_config"), "-E", str(self.logs / "sshd.log")], "ssh.log")
        self._started.append("sshd")
        for _ in range(50):
            probe = subprocess.run(["ssh", "-i", str(self.work / "key"), "-o", "StrictHostKeyChecking=no",
                                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                                    "-o", "BatchMode=yes", f"{self.user}@127.0.0.1", "true"],
                                   capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                return f"user {self.user}, sshd on 127.0.0.1:22"
            time.sleep(0.2)
        raise self.fail(f"ssh {self.user}@127.0.0.1: {probe.stderr.strip()}", self.logs / "sshd.log")

    def write_config(self) -> str:
        local = yaml.safe_load(LOCAL_CONFIG.read_text())
        # What the config's rsync sends, copied: the launcher hashes every file under a mount before
        # it syncs, rsync_exclude or not (about 30 s for a checkout holding make's 8 GB .venv).
        source = self.work / "checkout"
        excluded = [pattern.rsplit("/", 1)[-1] for pattern in local.get("rsync_exclude", [])]
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*excluded), symlinks=True)
        raw = derive_config(local, self.user, self.work / "key", self.home, self.cluster, source,
                            break_setup=self.break_setup)
        from ray.autoscaler._private.util import prepare_config, validate_config

        try:
            validate_config(prepare_config(copy.deepcopy(raw)))
        except Exception as exc:  # noqa: BLE001 - jsonschema's or the launcher's own
            raise self.fail(f"the derived config does not pass Ray's validation: {str(exc).splitlines()[0]}") from None
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))
        if not self.full:  # the head's venv sees this interpreter's packages; pip adds the project
            venv = self.home / "reprlab-venv"
            self.sh(["python3", "-m", "venv", str(venv)], "config.log", as_user=True)
            site = next(venv.glob("lib/python3*/site-packages"))
            (site / "reprlab-smoke-seed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        return (f"{self.config} from {LOCAL_CONFIG.relative_to(ROOT)}"
                + (" with a broken setup command" if self.break_setup else "")
                + ("" if self.full else "; the head's venv sees this machine's packages (reduced)"))

    def ray_up(self) -> str:
        self._started.append("cluster")
        log = self.logs / "ray_up.log"
        done = self.sh([_ray(), "up", "-y", "--no-config-cache", str(self.config)], log.name, check=False)
        if done.returncode != 0:
            raise self.fail(_launcher_failure(log.read_text(errors="replace")), log)
        return "head started by the config's setup and start commands"

    def _exec(self, command: str, log: str) -> None:
        self.sh([_ray(), "exec", str(self.config), command], log)

    def train(self) -> str:
        run = self.home / "runs" / "smoke-train"
        sets = " ".join(f"--set {o}" for o in [*TINY, "scaling.num_workers=2", "scaling.cpus_per_worker=1"])
        self._exec(f"cd ~/reprlab && reprlab train margin/glyphs {sets} --output ~/runs/smoke-train", "train.log")
        for name in ("summary.json", "metrics.parquet", "config.yaml"):
            if not (run / name).is_file():
                raise self.fail(f"{run / name} was not written", self.logs / "train.log")
        summary = json.loads((run / "summary.json").read_text())
        return f"{run}: summary.json ({len(summary)} keys), metrics.parquet; 2 Ray Train workers"

    def tune(self) -> str:
        out = self.home / "runs" / "smoke-tune"
        sets = " ".join(f"--set {o}" for o in TINY)
        self._exec(f"cd ~/reprlab && reprlab tune tune_configs/margin_glyphs.yaml {sets} --trials 2 "
                   "--output ~/runs/smoke-tune", "tune.log")
        for name in ("trials.parquet", "best.yaml"):
            if not (out / name).is_file():
                raise self.fail(f"{out / name} was not written", self.logs / "tune.log")
        trials = sorted(p.name for p in (out / "trials").iterdir())
        if len(trials) != 2:
            raise self.fail(f"{out / 'trials'} holds {len(trials)} trials, expected 2", self.logs / "tune.log")
        self._trials = trials
        return f"{out}: trials.parquet, best.yaml, trials {', '.join(trials)}"

    def dashboard(self) -> str:
        log = self.logs / "dashboard.log"
        jobs = json.loads(_get("http://127.0.0.1:8265/api/jobs/", log))
        drivers = {("train" if " train " in j["entrypoint"] else "tune"): j["status"] for j in jobs
                   if j.get("type") == "DRIVER" and "reprlab" in j.get("entrypoint", "")}
        if drivers != {"train": "SUCCEEDED", "tune": "SUCCEEDED"}:
            raise self.fail(f"the dashboard's jobs: {drivers}, expected the train and tune drivers SUCCEEDED", log)
        metrics = _get("http://127.0.0.1:8080/metrics", log)
        epochs = [line for line in metrics.splitlines() if line.startswith("ray_reprlab_epoch{")]
        train = [line for line in epochs if 'experiment="glyphs-margin"' in line]
        missing = [t for t in self._trials if not any(f'trial="{t}"' in line for line in epochs)]
        if not train or missing:
            raise self.fail(f"ray_reprlab_epoch on :8080 lacks {'the training run' if not train else ''}"
                            f"{' trials ' + ', '.join(missing) if missing else ''}", log)
        return f"jobs API: both drivers SUCCEEDED; metrics: ray_reprlab_epoch for the run and {len(self._trials)} trials"

    def ray_down(self) -> str:
        self.sh([_ray(), "down", "-y", str(self.config)], "ray_down.log")
        self._started.remove("cluster")
        for _ in range(50):
            if not _user_processes(self.user, exclude="sshd"):
                return "no process of the head's Ray left"
            time.sleep(0.2)
        raise self.fail(f"processes of {self.user} left after ray down: {_user_processes(self.user, 'sshd')[:3]}",
                        self.logs / "ray_down.log")

    # ---- cleanup ---------------------------------------------------------------------------------
    def cleanup(self, ok: bool) -> None:
        """Take down whatever was started, newest first; keep the logs of a failed run."""
        if "cluster" in self._started:
            subprocess.run([_ray(), "down", "-y", str(self.config)], capture_output=True, env=self.env,
                           timeout=300, cwd=self.work)
        if "sshd" in self._started:
            pid_file = self.work / "sshd.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        if "user" in self._started:
            subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)
            time.sleep(0.5)
            subprocess.run(["userdel", self.user], capture_output=True)
        # the launcher's SSH control sockets: /tmp/ray_ssh_<local user>/<cluster> whatever TMPDIR says
        mine = Path(f"/tmp/ray_ssh_{_h(getpass.getuser())}")
        shutil.rmtree(mine / _h(self.cluster), ignore_errors=True)
        if mine.is_dir() and not any(mine.iterdir()):
            mine.rmdir()
        if ok and not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
            return
        for bulky in (self.home, self.work / "tmp", self.work / "checkout"):  # the venv can be gigabytes
            shutil.rmtree(bulky, ignore_errors=True)
        if not self.logs.is_dir() or not any(self.logs.iterdir()):  # failed before writing a log
            shutil.rmtree(self.work, ignore_errors=True)


def derive_config(raw: dict, user: str, key: Path, home: Path, name: str, source: Path = ROOT, *,
                  break_setup: bool = False) -> dict:
    """The local-provider config for this machine: head 127.0.0.1 over SSH as ``user``, ``source``
    (the checkout, or the copy of what its rsync would send) mounted at ``~/reprlab`` of that user;
    the setup and start commands are kept as they are."""
    out = copy.deepcopy(raw)
    out["cluster_name"] = name
    out["provider"] = {**raw["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    out["auth"] = {"ssh_user": user, "ssh_private_key": str(key)}
    out["max_workers"] = 0
    out["file_mounts"] = {str(home / "reprlab"): str(source)}
    if break_setup:
        out["setup_commands"] = [out["setup_commands"][0], BROKEN_COMMAND, *out["setup_commands"][1:]]
    return out


def _launcher_failure(log: str) -> str:
    """Which phase and which command of ``ray up`` failed, from its log."""
    text = ANSI.sub("", log)
    phase = re.findall(r"\[(\d+)/(\d+)\] ([^\n]+)", text)
    command = re.findall(r"-- \((\d+)/(\d+)\) ([^\n]+)", text)
    where = f"phase {phase[-1][0]}/{phase[-1][1]} '{phase[-1][2].strip()}'" if phase else "before the first phase"
    if command and phase and "command" in phase[-1][2].lower():
        where += f", command {int(command[-1][0]) + 1} of {command[-1][1]}: {command[-1][2].strip()}"  # Ray counts from 0
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    return f"ray up: {where} ({tail[0].strip()[:160]})"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _ray() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.is_file() else (shutil.which("ray") or "ray")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _get(url: str, log: Path) -> str:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read().decode()
    except OSError as exc:
        raise SmokeFailed(f"cluster smoke: step 'dashboard' failed: GET {url}: {exc}") from None
    with log.open("a") as out:
        out.write(f"GET {url}\n{body[:20000]}\n")
    return body


def _user_processes(user: str, exclude: str) -> list[str]:
    done = subprocess.run(["ps", "-u", user, "-o", "comm="], capture_output=True, text=True)
    return [p for p in done.stdout.split() if p and exclude not in p]


def main(full: bool, keep: bool, workdir: str | None, break_setup: bool, skip_unless_root: bool) -> int:
    if skip_unless_root and os.geteuid() != 0:
        print("[smoke] skipped: not root (it creates a throwaway user and starts sshd on 127.0.0.1:22); "
              "run `sudo reprlab cluster smoke`", flush=True)
        return 0
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="reprlab-smoke-"))
    Smoke(work=work.resolve(), full=full, keep=keep, break_setup=break_setup).run()
    return 0
