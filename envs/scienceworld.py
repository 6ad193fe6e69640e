"""ScienceWorld (Wang et al., 2022): 30 grade-school science tasks in a simulated house, played through
the simulator that ships in the ``scienceworld`` package (a Scala jar, driven over py4j).

Each env instance owns one JVM, started with a capped heap and reused for every episode (``load``
re-seeds the world, so an episode does not depend on what the JVM played before). A step calls the
simulator's own ``step`` and reads score and completion: the package's ``env.step`` also lists every
valid action each step (tens to hundreds of ms); here ``admissible_actions()`` lists them only when
asked, at most once per step. A task is named as in the package (``boil``) or by its id (``1-1``); a
variation is an index into the package's train / dev / test variation list of the task, mapped to our
train / valid / test splits. Scores are the package's points / 100; a failed task scores -100
(clamped to 0 here) and ends the episode as lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
import weakref
from typing import IO

import scienceworld
from py4j.java_gateway import GatewayParameters, JavaGateway, find_jar_path
from py4j.protocol import Py4JError
from scienceworld.constants import BASEPATH, ID2TASK, JAR_PATH

from envs.base import EnvError, TextEnv, check_split

PINNED_VERSION = "1.2.3"
if scienceworld.__version__ != PINNED_VERSION:
    # Task variations and object order differ between releases, so episodes (and scores) would too.
    raise ImportError(
        f"scienceworld=={scienceworld.__version__} is installed but mise-rl pins scienceworld=={PINNED_VERSION}: pip install scienceworld=={PINNED_VERSION}"
    )

# The simulator's answers to input it could not parse (InputParser and PythonInterface in the jar).
UNRECOGNISED_PREFIXES = (
    "No known action matches that input.",
    "Unknown action.",
    "ERROR: Unknown response (",
    "ERROR: Value out of range (",
)
# The package's variation lists behind our splits (the package calls the validation split "dev").
SPLIT_LISTS = {"train": "getVariationsTrain", "valid": "getVariationsDev", "test": "getVariationsTest"}
ELECTRICAL_TASKS = ("power-component", "power-component-renewable-vs-nonrenewable-energy", "test-conductivity", "test-conductivity-of-unknown-substances")
ALWAYS_JVM_OPTIONS = ("-XX:+ExitOnOutOfMemoryError",)  # out of heap: the JVM dies (the env gets replaced) instead of limping on
DEFAULT_JVM_OPTIONS = ("-XX:+UseSerialGC",)  # one env, one GC thread: parallel collectors only add threads and memory


def valid_tasks_text() -> str:
    return ", ".join(f"{task_id} {name}" for task_id, name in ID2TASK.items())


def task_name(task: str) -> str:
    """The package's task name for a name or an id (``1-1`` -> ``boil``)."""
    if task in ID2TASK:
        return ID2TASK[task]
    if task in ID2TASK.values():
        return task
    raise EnvError(f"unknown ScienceWorld task {task!r}; valid (id name): {valid_tasks_text()}")


def _launch_jvm(options: list[str]) -> tuple[subprocess.Popen, IO[bytes], int]:
    """Start a py4j gateway JVM with the simulator's jar; return the process, its stderr file and port."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("ScienceWorld needs a Java runtime (11 or newer) on PATH; none was found")
    command = [
        java, "-cp", os.pathsep.join([find_jar_path(), JAR_PATH]), *options,
        "py4j.GatewayServer", "--die-on-broken-pipe", "0",
    ]  # fmt: skip
    # stdin stays open: the JVM exits when it closes, i.e. when this process dies, even by SIGKILL.
    # stderr goes to an anonymous file: a pipe that nobody reads could fill up and block the JVM.
    stderr = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=BASEPATH)
    port = b""
    for line in iter(process.stdout.readline, b""):  # the gateway prints its port (JVM flags may print before it)
        port = line.strip()
        if port.isdigit():
            break
    if not port.isdigit():
        process.kill()
        process.wait()
        message = _tail(stderr)
        for stream in (process.stdin, process.stdout, stderr):
            stream.close()
        raise RuntimeError(f"the ScienceWorld JVM did not start ({' '.join(command)}): {message}")
    # Later stdout (JVM logging such as -Xlog) is drained so that it cannot block the JVM either.
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process, stderr, int(port)


def _drain(stream: IO[bytes]) -> None:
    with stream:
        while stream.read1(65536):
            pass


def _tail(file: IO[bytes], limit: int = 2000) -> str:
    """The end of the JVM's stderr file; pread leaves the offset the JVM shares with us alone."""
    size = os.fstat(file.fileno()).st_size
    return os.pread(file.fileno(), limit, max(size - limit, 0)).decode(errors="replace") or "(empty)"


def _disable_nagle(gateway: JavaGateway) -> None:
    """Set TCP_NODELAY on the JVM's end of the py4j connection (one per env: one thread uses it).

    py4j writes a reply in 8 KiB pieces; with Nagle's algorithm the second piece waits for the delayed
    ACK, so every reply over 8 KiB (a listing of ~1000 valid actions is 30 KiB) stalls for 40 ms.
    """
    jvm = gateway.jvm
    try:
        field = jvm.java.lang.Class.forName("py4j.GatewayServer").getDeclaredField("connections")
        field.setAccessible(True)
        for connection in field.get(gateway.java_gateway_server):
            connection.getSocket().setTcpNoDelay(True)
    except Py4JError as exc:  # another py4j version: only large replies get slower
        warnings.warn(f"could not set TCP_NODELAY on the ScienceWorld py4j connection ({exc}); replies over 8 KiB will take 40 ms more", stacklevel=2)


def _stop_jvm(gateway: JavaGateway, process: subprocess.Popen, stderr: IO[bytes]) -> None:
    """Kill the JVM and release its pipes; safe on a JVM that already died."""
    gateway.close()
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stdin.close()
    stderr.close()


class ScienceWorldEnv(TextEnv):
    name = "scienceworld"

    def __init__(
        self,
        tasks: list[str],
        simplification: str = "easy",
        max_steps: int = 30,
        step_caps: dict[str, int] | None = None,
        jvm_heap_mb: int = 128,
        jvm_options: list[str] | None = None,
    ) -> None:
        super().__init__(max_steps)
        if not tasks:
            raise EnvError(f"ScienceWorld needs at least one task; valid (id name): {valid_tasks_text()}")
        self._tasks = {task: task_name(task) for task in tasks}  # as spelled in the config -> package name
        if len(set(self._tasks.values())) < len(self._tasks):
            raise EnvError(f"ScienceWorld tasks {tasks!r} name the same task twice (by name and by id?)")
        self._step_caps = {task_name(task): cap for task, cap in (step_caps or {}).items()}
        for task, cap in self._step_caps.items():
            if cap < 1:
                raise EnvError(f"step cap {cap} for ScienceWorld task {task!r} must be >= 1")
        if jvm_heap_mb < 64:
            raise EnvError(f"jvm_heap_mb={jvm_heap_mb} is too small for the ScienceWorld simulator; use >= 64")
        self._default_max_steps = max_steps
        self.simplification = simplification
        self._admissible: list[str] | None = None  # valid actions of the current step, listed on demand
        extra = DEFAULT_JVM_OPTIONS if jvm_options is None else jvm_options
        self.jvm_process, self._stderr, port = _launch_jvm([f"-Xmx{jvm_heap_mb}m", *ALWAYS_JVM_OPTIONS, *extra])
        # No py4j memory management: its finalisers talk to the JVM from inside Python's garbage collector
        # (which trips CPython 3.11's AST constructor, e.g. in pytest); the lists we fetch are detached by hand.
        self._gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port, enable_memory_management=False))
        self._finalizer = weakref.finalize(self, _stop_jvm, self._gateway, self.jvm_process, self._stderr)
        try:
            jvm = self._gateway.jvm
            # The simulator prints debug text every step; send it nowhere rather than through a pipe.
            jvm.java.lang.System.setOut(jvm.java.io.PrintStream(jvm.java.io.OutputStream.nullOutputStream()))
            _disable_nagle(self._gateway)
            self._join = jvm.java.lang.String.join
            self._server = jvm.scienceworld.runtime.pythonapi.PythonInterface()
            self._check_simplification()
            self._variations = {name: self._variation_lists(name) for name in self._tasks.values()}
        except BaseException:
            self.close()
            raise

    # --- the JVM -------------------------------------------------------------------------------
    def _jvm_failure(self, exc: Exception) -> RuntimeError:
        """A readable error for a JVM that died or failed (out of heap, crash), with its stderr."""
        code = self.jvm_process.poll()
        state = "running" if code is None else f"exited with code {code}"
        return RuntimeError(f"ScienceWorld JVM (pid {self.jvm_process.pid}) {state}: {exc}; stderr: {_tail(self._stderr)}")

    def _check_simplification(self) -> None:
        valid = ["easy", *self._server.getPossibleSimplifications().split(", ")]
        parts = [p for p in self.simplification.split(",") if p]
        for part in parts:
            if part not in valid:
                raise EnvError(f"unknown ScienceWorld simplification {part!r} in {self.simplification!r}; valid: {', '.join(valid)} (comma-separated)")
        if "noElectricalAction" in parts:
            electrical = sorted(set(self._tasks.values()) & set(ELECTRICAL_TASKS))
            if electrical:
                raise EnvError(f"simplification noElectricalAction removes the actions that tasks {electrical} need")

    def _variation_lists(self, name: str) -> dict[str, list[int]]:
        """The package's variation indices of each split; they depend on the loaded task, so load it."""
        error = self._server.load(name, 0, self.simplification, False)
        if error:
            raise RuntimeError(f"ScienceWorld could not load task {name!r}: {error}")
        lists = {}
        for split, method in SPLIT_LISTS.items():
            java_list = getattr(self._server, method)()
            lists[split] = json.loads(java_list.toString())  # "[0, 1, 2]": one round trip, not one per item
            self._gateway.detach(java_list)
        return lists

    # --- TextEnv -------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[str]:
        check_split(split)
        return list(self._tasks)

    def num_variations(self, task: str, split: str) -> int:
        return len(self._variations[self._tasks[task]][split])

    def package_variation(self, task: str, variation: int, split: str = "train") -> tuple[str, int]:
        """The package's task name and variation index behind our (task, variation, split)."""
        check_split(split)
        if task not in self._tasks:
            raise EnvError(f"unknown task {task!r} for env {self.name!r}; valid tasks: {', '.join(self._tasks)}")
        indices = self._variations[self._tasks[task]][split]
        if not 0 <= variation < len(indices):
            raise EnvError(f"variation {variation!r} out of range for task {task!r} split {split!r}: valid 0..{len(indices) - 1}")
        return self._tasks[task], indices[variation]

    def gold_path(self, task: str, variation: int, split: str = "train") -> list[str]:
        """The package's gold action sequence (its generator replays the task, so the current episode ends)."""
        name, index = self.package_variation(task, variation, split)
        self.done = True
        self._server.load(name, index, self.simplification, True)
        java_list = self._server.getGoldActionSequence()
        text = self._join("\n", java_list)
        self._gateway.detach(java_list)
        return text.split("\n") if text else []

    def expert_actions(self, task: str, variation: int, split: str = "train") -> list[str]:
        return self.gold_path(task, variation, split)

    def _reset(self, task: str, variation: int, split: str) -> tuple[str, str, float]:
        if not self._finalizer.alive:
            raise EnvError("this ScienceWorld env is closed (its JVM is gone); make a new one")
        name, index = self.package_variation(task, variation, split)
        self.max_steps = self._step_caps.get(name, self._default_max_steps)
        self._admissible = None
        try:
            error = self._server.load(name, index, self.simplification, False)
            if error:
                raise RuntimeError(f"ScienceWorld could not load task {name!r}: {error}")
            observation = self._server.step("look around")  # what the package's reset shows first
            goal = self._server.getTaskDescription()
            score, _, _ = self._read_score()
        except Py4JError as exc:
            raise self._jvm_failure(exc) from exc
        return goal, observation, score

    def _step(self, action: str) -> tuple[str, float, bool, bool, bool]:
        self._admissible = None
        try:
            observation = self._server.step(action)
            score, won, lost = self._read_score()
        except Py4JError as exc:
            raise self._jvm_failure(exc) from exc
        return observation, score, won, lost, not observation.startswith(UNRECOGNISED_PREFIXES)

    def _read_score(self) -> tuple[float, bool, bool]:
        """(normalised score, won, lost). A failed task scores -1 and is not marked completed."""
        points = round(100 * self._server.getScore())  # the package's integer points
        lost = points < 0
        won = bool(self._server.getCompleted()) and not lost
        return max(points, 0) / 100, won, lost

    def admissible_actions(self) -> list[str]:
        if self._admissible is None:
            try:
                java_list = self._server.getValidActionObjectCombinations()
                text = self._join("\n", java_list)  # one round trip, not one per action
                self._gateway.detach(java_list)
            except Py4JError as exc:
                raise self._jvm_failure(exc) from exc
            self._admissible = text.split("\n") if text else []
        return list(self._admissible)

    def close(self) -> None:
        super().close()
        self._finalizer()
