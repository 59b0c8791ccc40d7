"""Cutting and restoring a board's supply: one interface, two switches.

The power-cut suite asks a :class:`PowerSwitch` for ``off()``, ``on()``, ``cycle()`` and
``state()`` and never learns which one it holds:

- :class:`VirtualPower`: a virtual board's supply through the virtual farm's debug port levers
  (dfuhil.sim.faults: ``cut_power_now`` / ``power_on``). The virtual PDU (dfuhil.sim.pdu) wires
  its outlets through it too.
- :class:`LabgridPower`: a real board's switch (a network PDU, a USB hub port) as its labgrid
  place publishes it (the ``power`` NetworkPowerPort that ``dfuhil farm export`` writes from
  ``power:`` in boards.yaml). labgrid's own power driver does the talking: dfuhil runs
  ``labgrid-client -x COORDINATOR -p PLACE power on|off|get`` from labgrid's venv as a
  subprocess (dfuhil never imports labgrid: see lab-common).

A failed switch is an :class:`InfrastructureError` naming the board, the place, the PDU and its
outlet: the rig failed, not the product.
"""

from __future__ import annotations

import os
import subprocess
import time
from abc import ABC, abstractmethod

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.labgrid_client import identity_of, labgrid_program
from dfuhil.farm.model import BoardSpec, Farm, PowerSpec
from dfuhil.sim.faults import FaultInjector

CYCLE_OFF_S = 2.0  # labgrid's NetworkPowerDriver.delay: long enough for the rails to drain
CLIENT_TIMEOUT_S = 30.0  # a switch that has not answered by then is not going to


class PowerSwitch(ABC):
    """A board's supply switch."""

    board: str

    @abstractmethod
    def on(self) -> None:
        """Restore the supply (nothing happens if it is on)."""

    @abstractmethod
    def off(self) -> None:
        """Cut the supply now."""

    @abstractmethod
    def state(self) -> bool:
        """Whether the switch says the supply is on."""

    def cycle(self, off_s: float = CYCLE_OFF_S) -> None:
        """Off, ``off_s`` seconds without power, on again."""
        self.off()
        time.sleep(off_s)
        self.on()

    def close(self) -> None:  # noqa: B027 - most switches hold no connection
        """Let go of whatever connection the switch holds."""


class VirtualPower(PowerSwitch):
    """A virtual board's supply, switched through its debug port (``faults``: its levers)."""

    def __init__(self, board: str, faults: FaultInjector) -> None:
        self.board = board
        self.faults = faults

    def on(self) -> None:
        if not self.faults.powered():  # power_on on a powered board would reset it
            self.faults.power_on()

    def off(self) -> None:
        if self.faults.powered():
            self.faults.cut_power_now()

    def state(self) -> bool:
        return self.faults.powered()

    def close(self) -> None:
        self.faults.close()


class LabgridPower(PowerSwitch):
    """A board's switch through its labgrid place, driven by ``labgrid-client power``.

    The place must be acquired by this labgrid identity (LG_USERNAME/LG_HOSTNAME of the
    process) for as long as the switch is used: the switch rides on the lease the caller
    already holds (the board's lease acquired the place) and never acquires, releases or kicks
    the place itself. labgrid refuses a power command on a place it does not hold, and so does
    this class (InfrastructureError saying who must hold it).
    """

    def __init__(
        self,
        board: str,
        place: str,
        coordinator: str,
        pdu: PowerSpec,
        *,
        identity: str | None = None,
    ) -> None:
        """``identity``: the "host/user" that acquired the place (this process's lease agent);
        None: the process's own LG_HOSTNAME/LG_USERNAME."""
        self.board = board
        self.place = place
        self.coordinator = coordinator
        self.pdu = pdu
        self.identity = identity

    @classmethod
    def for_board(cls, farm: Farm, board: BoardSpec) -> LabgridPower:
        """The switch boards.yaml gives ``board`` (InputError if it has none, or no place or
        coordinator to reach it through)."""
        if board.power is None:
            raise InputError(f"{farm.path}: board {board.name} has no power: switch")
        if board.place is None:
            raise InputError(
                f"{farm.path}: board {board.name}: its power switch is reached through labgrid; "
                "add place: NAME"
            )
        coordinator = farm.coordinator or os.environ.get("LG_COORDINATOR")
        if not coordinator:
            raise InputError(
                f"{farm.path}: board {board.name} has a power switch but no labgrid coordinator "
                "is named: add coordinator: HOST:PORT to the file or set LG_COORDINATOR"
            )
        # The board's lease acquired the place as this process's agent: switch as that holder.
        identity = identity_of(coordinator)
        return cls(board.name, board.place, coordinator, board.power, identity=identity)

    def on(self) -> None:
        self._client("on")

    def off(self) -> None:
        self._client("off")

    def state(self) -> bool:
        said = self._client("get").strip().splitlines()
        last = said[-1] if said else ""
        if last.endswith(" is on"):
            return True
        if last.endswith(" is off"):
            return False
        raise self._failed("get", f"labgrid-client answered {last!r}")

    def _client(self, action: str) -> str:
        command = [
            str(labgrid_program("labgrid-client")),
            "-x",
            self.coordinator,
            "-p",
            self.place,
            "power",
            action,
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
                env=self._env(),
            )
        except subprocess.TimeoutExpired:
            raise self._failed(action, f"no answer within {CLIENT_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise self._failed(action, lines[-1] if lines else f"exit {done.returncode}")
        return done.stdout

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.identity is not None:
            host, _, user = self.identity.partition("/")
            env.update(LG_HOSTNAME=host, LG_USERNAME=user)
        return env

    def _failed(self, action: str, why: str) -> InfrastructureError:
        return InfrastructureError(
            f"power {action} failed through place {self.place} (coordinator "
            f"{self.coordinator}), {self.pdu}: {why}",
            f"check that the PDU answers at {self.pdu.host} and that outlet {self.pdu.index} "
            f"feeds {self.board}; the place must be acquired by this user "
            f"({self.identity or os.environ.get('LG_USERNAME', 'LG_USERNAME unset')}): "
            f"labgrid-client -p "
            f"{self.place} acquire",
            board=self.board,
        )
