"""Local chains for `ferry dev` and the test suite: anvil processes on loopback.

Anvil comes from the npm package `@foundry-rs/anvil`, whose real binary sits in a
per-platform package (`node_modules/@foundry-rs/anvil-<os>-<arch>/bin/anvil`).
Each `AnvilProcess` is one chain id on one 127.0.0.1 port. It keeps everything
anvil writes (state snapshots, config) in a private temporary folder used as its
HOME, and removes that folder when it stops, so nothing lands in the user's home.

History: anvil is started with `--prune-history <N>` (N = `history_states`,
256 by default), which bounds memory on long runs. A bare `--prune-history`
keeps no past states at all, and then `anvil_reorg` fails with "Required data
unavailable" and calls at past blocks fail: reorg tests need a few states kept.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import httpx

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

#: The first 10 accounts anvil funds by default, derived from the public
#: development mnemonic "test test test test test test test test test test test junk"
#: (m/44'/60'/0'/0/i). Public keys for local chains only: never fund them anywhere real.
DEV_MNEMONIC: Final = "test test test test test test test test test test test junk"
DEV_ACCOUNTS: Final[tuple[tuple[str, str], ...]] = (
    (
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    ),
    (
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    ),
    (
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    ),
    (
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    ),
    (
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    ),
    (
        "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
        "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    ),
    (
        "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    ),
    (
        "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
        "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    ),
    (
        "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
        "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    ),
    (
        "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
        "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
    ),
)

_OS_NAMES: Final = {"linux": "linux", "darwin": "darwin", "win32": "win32"}
_ARCH_NAMES: Final = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def anvil_binary() -> Path:
    """Return the anvil binary installed by `npm ci` for this platform."""
    os_name = _OS_NAMES.get(sys.platform)
    arch = _ARCH_NAMES.get(platform.machine().lower())
    if os_name is None or arch is None:
        raise RuntimeError(
            f"anvil from npm has no binary for {sys.platform}/{platform.machine()}; "
            "install Foundry's anvil another way and point the chain RPC URLs at it"
        )
    executable = "anvil.exe" if os_name == "win32" else "anvil"
    binary = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-{os_name}-{arch}" / "bin" / executable
    if not binary.is_file():
        raise FileNotFoundError(f"anvil is not installed at {binary}: run `npm ci` in {REPO_ROOT} first")
    return binary


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AnvilProcess:
    """One running anvil chain on 127.0.0.1; stop it with `stop()` or a `with` block."""

    def __init__(self, process: subprocess.Popen[bytes], chain_id: int, port: int, workdir: Path) -> None:
        self._process = process
        self._workdir = workdir
        self.chain_id = chain_id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(
        cls,
        chain_id: int,
        port: int,
        block_time: float | None = None,
        extra_args: Sequence[str] = (),
        *,
        history_states: int = 256,
        timeout: float = 30.0,
    ) -> AnvilProcess:
        """Launch anvil and return once it answers `eth_chainId` with `chain_id`."""
        binary = anvil_binary()
        workdir = Path(tempfile.mkdtemp(prefix=f"ferry-anvil-{chain_id}-"))
        args = [
            str(binary),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--chain-id", str(chain_id),
            "--prune-history", str(history_states),
            "--silent",
        ]  # fmt: skip
        if block_time is not None:
            args += ["--block-time", f"{block_time:g}"]
        args += list(extra_args)
        env = {**os.environ, "HOME": str(workdir), "USERPROFILE": str(workdir)}
        # NOTE: anvil's stderr goes to a file, not a pipe: nobody drains a pipe while
        # it runs, and a full pipe would block it.
        with (workdir / "anvil.stderr").open("wb") as stderr:
            try:
                process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built here
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                    cwd=workdir,
                )
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
        chain = cls(process, chain_id, port, workdir)
        try:
            chain._wait_ready(timeout)
        except BaseException:
            chain.stop()
            raise
        return chain

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate anvil (kill it if it does not exit in time) and delete its folder."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AnvilProcess(chain_id={self.chain_id}, url={self.url!r}, pid={self.pid})"

    def _stderr_text(self) -> str:
        try:
            return (self._workdir / "anvil.stderr").read_text(errors="replace").strip() or "(empty)"
        except OSError:
            return "(unavailable)"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"anvil for chain {self.chain_id} exited with code {self._process.returncode} "
                        f"before answering on {self.url} (is port {self.port} in use?); "
                        f"anvil stderr: {self._stderr_text()}"
                    )
                if self._answers_chain_id(client, request) and self._process.poll() is None:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"anvil for chain {self.chain_id} did not answer eth_chainId on {self.url} "
                        f"within {timeout:g} s; anvil stderr: {self._stderr_text()}"
                    )
                time.sleep(0.05)

    def _answers_chain_id(self, client: httpx.Client, request: dict[str, object]) -> bool:
        try:
            response = client.post(self.url, json=request)
        except httpx.TransportError:
            return False
        result = response.json().get("result")
        if result is None:
            return False
        if int(result, 16) != self.chain_id:
            raise RuntimeError(
                f"the node on {self.url} reports chain id {int(result, 16)}, not {self.chain_id}: "
                "another node already uses this port"
            )
        return True
