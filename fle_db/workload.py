"""A deterministic, FLE-like workload: game states, steps, agent outputs and feedbacks.

The demo and the benchmarks use this generator so that they write data shaped and sized like the
Factorio Learning Environment's (FLE) own:

* a **game state** is what FLE's ``GameState.to_raw()`` parses to: ``entities`` (base64 of the
  zlib-compressed entity list, growing from ~0.2 KB at step 0 to ~2 KB at step 50 and ~3-4 KB
  from step ~100 on, where the factory stops growing), ``inventories``, ``research`` (182
  technologies, ~51 KB of compact JSON, changing rarely: one technology is researched every ~8
  steps), ``timestamp``, ``namespaces`` (base64 pickles of the agent's variables) and
  ``agent_messages``; ~53 KB of JSON in all;
* a **step** holds the agent's Python program (``action``, ~1-2 KB), an ``observation``, a
  ``reward``, an ISO ``timestamp`` and token counts; ~5 KB of JSON;
* an **agent output** is ``{"code", "reasoning", "model"}``, an **environment feedback** is
  ``{"stdout", "error", "score", "ticks"}``.

Everything is a pure function of ``(seed, trajectory_index, step_number)``: the same seed gives
byte-identical output in any process, in any call order (each value draws from its own
``random.Random`` seeded with a string, which Python hashes with SHA-512, independent of
``PYTHONHASHSEED``; ``entities`` also depends on the zlib library's output, identical for the
same zlib build). There is no global state: a :class:`Workload` holds the seed and a bounded
per-trajectory cache (research-tree versions, entity layout), so generating a trajectory's states
in order costs ~0.3 ms each.

Returned values are fresh at the top level, but the ``research`` technologies of a state are
shared with the cache and with other states of the same trajectory (copy-on-change): treat a
generated game state as read-only, or ``copy.deepcopy`` it before mutating it.
"""

from __future__ import annotations

import base64
import bisect
import logging
import math
import pickle
import random
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from .instants import iso
from .validation import is_int

log = logging.getLogger("fle_db")

#: Seconds since the epoch of 2025-01-01T00:00:00Z: workload clocks start within 30 days of it.
EPOCH = 1_735_689_600
#: Mean number of steps between two completed researches.
RESEARCH_EVERY = 8
#: The factory stops growing at this many entities (~4 KB of ``entities``, reached near step 100).
MAX_ENTITIES = 150
#: The agent keeps at most this many variables in its namespace.
MAX_VARIABLES = 60
#: Default number of trajectories whose caches a :class:`Workload` keeps.
DEFAULT_CACHE_TRAJECTORIES = 64

_SCIENCE = (
    "automation-science-pack",
    "logistic-science-pack",
    "military-science-pack",
    "chemical-science-pack",
    "production-science-pack",
    "utility-science-pack",
    "space-science-pack",
)
# Science packs per tier (indexes into _SCIENCE); military technologies also take pack 2 from tier 2.
_TIER_PACKS = ((0,), (0, 1), (0, 1, 3), (0, 1, 3, 4), (0, 1, 3, 5), (0, 1, 3, 4, 5), (0, 1, 3, 4, 5, 6))
_TIER_UNITS = ((10, 75), (50, 300), (100, 500), (200, 1000), (250, 1000), (500, 2000), (1000, 4000))
_ENERGY = (5.0, 10.0, 15.0, 30.0, 45.0, 60.0)
_MILITARY = (
    "military",
    "turret",
    "damage",
    "shooting",
    "armor",
    "explosive",
    "flammables",
    "robot-count",
    "defender",
    "distractor",
    "destroyer",
    "tank",
    "rocketry",
    "land-mines",
    "artillery",
    "atomic",
    "uranium-ammo",
    "defense",
    "gate",
    "stone-wall",
)
# Factorio 1.1 technologies by tier (the tier picks the science packs and the unit count).
_BASE_TECHNOLOGIES: tuple[tuple[str, ...], ...] = (
    (
        "automation",
        "logistics",
        "electronics",
        "optics",
        "turrets",
        "stone-wall",
        "military",
        "logistic-science-pack",
        "steel-processing",
        "fast-inserter",
    ),
    (
        "automation-2",
        "logistics-2",
        "advanced-material-processing",
        "engine",
        "fluid-handling",
        "oil-processing",
        "circuit-network",
        "concrete",
        "electric-energy-distribution-1",
        "landfill",
        "military-2",
        "gate",
        "heavy-armor",
        "railway",
        "automated-rail-transportation",
        "rail-signals",
        "fluid-wagon",
        "solar-energy",
        "toolbelt",
        "steel-axe",
        "sulfur-processing",
        "plastics",
        "advanced-electronics",
        "military-science-pack",
        "flammables",
        "explosives",
        "land-mines",
        "electric-energy-accumulators",
        "chemical-science-pack",
    ),
    (
        "advanced-oil-processing",
        "lubricant",
        "electric-engine",
        "battery",
        "robotics",
        "construction-robotics",
        "logistic-robotics",
        "advanced-electronics-2",
        "modules",
        "speed-module",
        "productivity-module",
        "effectivity-module",
        "advanced-material-processing-2",
        "electric-energy-distribution-2",
        "coal-liquefaction",
        "laser",
        "laser-turret",
        "rocketry",
        "explosive-rocketry",
        "modular-armor",
        "solar-panel-equipment",
        "night-vision-equipment",
        "belt-immunity-equipment",
        "exoskeleton-equipment",
        "personal-roboport-equipment",
        "energy-shield-equipment",
        "battery-equipment",
        "nuclear-power",
        "uranium-processing",
        "kovarex-enrichment-process",
        "nuclear-fuel-reprocessing",
        "production-science-pack",
        "utility-science-pack",
        "low-density-structure",
        "rocket-fuel",
        "stack-inserter",
        "tank",
        "defender",
        "distractor",
        "military-3",
        "cliff-explosives",
    ),
    ("automation-3", "speed-module-2", "productivity-module-2", "effectivity-module-2", "effect-transmission"),
    (
        "logistics-3",
        "power-armor",
        "personal-laser-defense-equipment",
        "discharge-defense-equipment",
        "battery-mk2-equipment",
        "energy-shield-mk2-equipment",
        "fusion-reactor-equipment",
        "destroyer",
        "military-4",
        "logistic-system",
        "uranium-ammo",
    ),
    (
        "speed-module-3",
        "productivity-module-3",
        "effectivity-module-3",
        "power-armor-mk2",
        "personal-roboport-mk2-equipment",
        "rocket-control-unit",
        "rocket-silo",
        "spidertron",
        "atomic-bomb",
        "artillery",
    ),
)
# Levelled technologies: (name, levels, tier of level 1).
_SERIES: tuple[tuple[str, int, int], ...] = (
    ("physical-projectile-damage", 6, 0),
    ("weapon-shooting-speed", 6, 0),
    ("stronger-explosives", 6, 1),
    ("refined-flammables", 6, 1),
    ("energy-weapons-damage", 6, 2),
    ("laser-shooting-speed", 7, 2),
    ("follower-robot-count", 6, 2),
    ("worker-robots-speed", 5, 2),
    ("worker-robots-storage", 3, 2),
    ("inserter-capacity-bonus", 7, 1),
    ("research-speed", 6, 1),
    ("braking-force", 7, 2),
    ("mining-productivity", 3, 1),
    ("artillery-shell-range", 1, 6),
    ("artillery-shell-speed", 1, 6),
)
_LEVEL_TIER = (0, 1, 1, 1, 2, 2, 4, 5)  # minimum tier of level n (index n)

_ENTITY_KINDS = (
    ("burner-mining-drill", 2.0, 9),
    ("electric-mining-drill", 3.0, 7),
    ("stone-furnace", 2.0, 9),
    ("transport-belt", 1.0, 16),
    ("burner-inserter", 1.0, 5),
    ("inserter", 1.0, 7),
    ("small-electric-pole", 1.0, 5),
    ("pipe", 1.0, 4),
    ("offshore-pump", 1.0, 1),
    ("boiler", 3.0, 1),
    ("steam-engine", 3.0, 2),
    ("assembling-machine-1", 3.0, 4),
    ("wooden-chest", 1.0, 3),
    ("iron-chest", 1.0, 2),
    ("lab", 3.0, 1),
)
_ENTITY_WEIGHTS = tuple(kind[2] for kind in _ENTITY_KINDS)
_STATUSES = ("working", "working", "working", "working", "no_fuel", "no_input", "full_output", "waiting_for_source")
_ITEMS = (
    "iron-ore",
    "copper-ore",
    "coal",
    "stone",
    "wood",
    "iron-plate",
    "copper-plate",
    "steel-plate",
    "stone-brick",
    "iron-gear-wheel",
    "copper-cable",
    "electronic-circuit",
    "transport-belt",
    "burner-inserter",
    "inserter",
    "burner-mining-drill",
    "electric-mining-drill",
    "stone-furnace",
    "pipe",
    "small-electric-pole",
    "boiler",
    "steam-engine",
    "offshore-pump",
    "assembling-machine-1",
    "automation-science-pack",
    "lab",
    "wooden-chest",
)
_RAW_ITEMS = _ITEMS[:5]  # what harvest_resource yields
_PROTOTYPES = (
    "BurnerMiningDrill",
    "ElectricMiningDrill",
    "StoneFurnace",
    "TransportBelt",
    "BurnerInserter",
    "Inserter",
    "SmallElectricPole",
    "Pipe",
    "WoodenChest",
    "IronChest",
    "AssemblingMachine1",
    "Lab",
)
_CRAFTABLE = ("IronGearWheel", "CopperCable", "ElectronicCircuit", "TransportBelt", "StoneFurnace", "Pipe", "Inserter")
_RESOURCES = ("IronOre", "CopperOre", "Coal", "Stone", "Wood")
_DIRECTIONS = ("UP", "RIGHT", "DOWN", "LEFT")
_MODELS = ("claude-3-5-sonnet-20241022", "gpt-4o-2024-08-06", "deepseek-chat-v3", "llama-3.3-70b-instruct")
_TASKS = (
    "iron_ore_throughput_16",
    "iron_plate_throughput_16",
    "iron_gear_wheel_throughput_16",
    "electronic_circuit_throughput_16",
    "automation_science_pack_throughput_16",
    "open_play",
)
_PLANS = (
    "The iron smelting column is starved of ore, so I will add another drill feeding the first furnace.",
    "Coal supply is the bottleneck: the burner drills keep running out of fuel.",
    "I should automate gear production before scaling belts, since every belt needs gears.",
    "The previous program failed because the position was blocked; I will search for a free spot first.",
    "Power is stable now, so electric drills will raise throughput more than more burner drills.",
    "I will connect the furnaces with inserters and a belt so that plates accumulate in a chest.",
    "Inventory shows enough copper plates to craft cables for electronic circuits.",
    "I need to verify the production rate by sampling the chest contents over a few seconds.",
    "The last step increased the score, so the same pattern can be repeated on the copper patch.",
    "Research is progressing; labs need a steady supply of automation science packs.",
)
_FOLLOWUPS = (
    "First I check the inventory, then place the entities and insert fuel.",
    "I will print the positions so the next step can reuse them.",
    "If the placement fails I will move two tiles further from the resource patch.",
    "Afterwards I assert that the furnaces are working to catch mistakes early.",
    "I keep the program short so that errors are easy to locate.",
)


def _rng(seed: int, *parts: object) -> random.Random:
    """An independent stream for one purpose, e.g. ``_rng(seed, "state", 3, 17)``."""
    return random.Random(":".join(map(str, (seed, *parts))))


@dataclass(frozen=True, slots=True)
class _Entity:
    name: str
    x: float
    y: float
    direction: int
    size: float


@dataclass
class _TrajectoryCache:
    """What a trajectory's values are derived from, computed once and extended lazily."""

    technologies: dict[str, dict[str, Any]]  # version 0 of the research tree
    order: list[str]  # technologies researched after version 0, in order
    flip_steps: list[int] = field(default_factory=list)  # step at which order[k] completes
    flip_rng: random.Random = field(default_factory=random.Random)
    versions: list[dict[str, Any]] = field(default_factory=list)  # research dict per version
    entities: list[_Entity] = field(default_factory=list)
    entity_rng: random.Random = field(default_factory=random.Random)
    growth: float = 1.0  # entities placed per step
    score_factor: float = 1.0
    clock: int = EPOCH  # epoch seconds of step 0
    agents: int = 1


class Workload:
    """Deterministic FLE-like data for seed ``seed``; see the module docstring.

    Every method is a pure function of ``(seed, trajectory_index, step_number)``; the instance
    only caches derived data for the ``cache_trajectories`` most recently used trajectories.
    Not thread-safe: use one instance per thread. ``start`` (epoch seconds) dates step 0 of every
    trajectory at that instant (the demo: runs made today); by default clocks start within 30
    days of 2025-01-01, so that data is the same whenever it is generated.

    Raises:
        ValueError: a negative index or step number, or ``cache_trajectories < 1``.
    """

    def __init__(
        self, seed: int = 0, *, cache_trajectories: int = DEFAULT_CACHE_TRAJECTORIES, start: int | None = None
    ) -> None:
        if cache_trajectories < 1:
            raise ValueError(f"cache_trajectories must be >= 1, got {cache_trajectories}")
        self.seed = int(seed)
        self.start = start
        self._cache_size = cache_trajectories
        self._cache: OrderedDict[int, _TrajectoryCache] = OrderedDict()

    def __repr__(self) -> str:
        return f"Workload(seed={self.seed})"

    # -- trajectories ---------------------------------------------------------------------
    def trajectory_id(self, trajectory_index: int) -> str:
        """The default id of trajectory ``trajectory_index``: ``wl-<seed>-<index>``."""
        _check(trajectory_index, 0)
        return f"wl-{self.seed}-{trajectory_index}"

    def model(self, trajectory_index: int) -> str:
        """The (simulated) model name that drives trajectory ``trajectory_index``."""
        return _rng(self.seed, "model", trajectory_index).choice(_MODELS)

    def trajectory(self, trajectory_index: int, trajectory_id: str | None = None) -> dict[str, Any]:
        """A trajectory record for ``DatabaseClient.save_trajectory``:
        ``{"id", "agent_type", "task", "start_time"}`` (``start_time`` is the ISO time of step 0)."""
        _check(trajectory_index, 0)
        cache = self._trajectory(trajectory_index)
        return {
            "id": trajectory_id or self.trajectory_id(trajectory_index),
            "agent_type": "fle-simulated-agent",
            "task": _rng(self.seed, "task", trajectory_index).choice(_TASKS),
            "start_time": _iso(cache.clock),
        }

    def success_reward(self, steps: int) -> float:
        """The total reward above which a trajectory of ``steps`` steps counts as successful
        (about half of the trajectories reach it)."""
        return _score_curve(max(steps - 1, 0))

    # -- game states ----------------------------------------------------------------------
    def research(self, trajectory_index: int, step_number: int) -> dict[str, Any]:
        """The research state at a step: ``{"technologies": {name: technology}, "current_research",
        "research_queue"}``. Equal (and mostly the same objects) between two completions. Read-only."""
        _check(trajectory_index, step_number)
        cache = self._trajectory(trajectory_index)
        while not cache.flip_steps or cache.flip_steps[-1] < step_number:
            last = cache.flip_steps[-1] if cache.flip_steps else 0
            cache.flip_steps.append(last + cache.flip_rng.randint(RESEARCH_EVERY - 3, RESEARCH_EVERY + 3))
        version = min(bisect.bisect_right(cache.flip_steps, step_number), len(cache.order))
        while len(cache.versions) <= version:
            cache.versions.append(self._next_research(cache))
        return cache.versions[version]

    def game_state(self, trajectory_index: int, step_number: int) -> dict[str, Any]:
        """The game state after step ``step_number``, shaped like FLE's ``GameState.to_raw()``
        parsed: ``entities``, ``inventories``, ``research``, ``timestamp``, ``namespaces``,
        ``agent_messages``. ``research`` is shared with other states (see :meth:`research`)."""
        research = self.research(trajectory_index, step_number)
        cache = self._trajectory(trajectory_index)
        rng = _rng(self.seed, "state", trajectory_index, step_number)
        count = min(MAX_ENTITIES, 2 + int(step_number * cache.growth))
        while len(cache.entities) < count:
            cache.entities.append(_new_entity(cache.entity_rng, len(cache.entities)))
        entities = []
        for e in cache.entities[:count]:
            status = rng.choice(_STATUSES)
            entity: dict[str, Any] = {
                "name": e.name,
                "position": {"x": e.x, "y": e.y},
                "direction": e.direction,
                "status": status,
                "warnings": [] if status == "working" else [status.replace("_", " ")],
                "health": 1.0,
                "tile_dimensions": {"tile_width": e.size, "tile_height": e.size},
            }
            if e.name.startswith(("burner", "stone-furnace", "boiler")):
                entity["fuel"] = {"coal": rng.randint(0, 50)}
            if e.name.endswith(("drill", "inserter")):
                entity["drop_position"] = {"x": e.x, "y": e.y + e.size / 2 + 0.5}
            if e.name in ("electric-mining-drill", "inserter", "assembling-machine-1", "lab"):
                entity["energy"] = round(rng.uniform(0, 3000), 1)
            entities.append(entity)
        entities_blob = base64.b64encode(zlib.compress(orjson.dumps(entities), 6)).decode("ascii")
        inventories = [_inventory(rng, step_number) for _ in range(cache.agents)]
        namespaces = [_namespace(self.seed, trajectory_index, agent, step_number) for agent in range(cache.agents)]
        messages: list[dict[str, Any]] = []
        if cache.agents > 1 and rng.random() < 0.2:
            messages.append(
                {"sender": rng.randrange(cache.agents), "message": rng.choice(_PLANS), "timestamp": step_number}
            )
        return {
            "entities": entities_blob,
            "inventories": inventories,
            "research": research,
            "timestamp": self._clock(trajectory_index, step_number),
            "namespaces": namespaces,
            "agent_messages": messages,
        }

    # -- steps ----------------------------------------------------------------------------
    def step_record(self, trajectory_index: int, step_number: int, trajectory_id: str | None = None) -> dict[str, Any]:
        """The step record: ``trajectory_id``, ``step_number``, ``action`` (the program, ~1-2 KB),
        ``observation``, ``reward``, ``timestamp`` (ISO 8601, UTC) and ``tokens``."""
        _check(trajectory_index, step_number)
        rng = _rng(self.seed, "step", trajectory_index, step_number)
        code = self._code(trajectory_index, step_number)
        research = self.research(trajectory_index, step_number)
        nearby = [
            {
                "name": rng.choice(_ENTITY_KINDS)[0],
                "position": {"x": rng.randint(-30, 30) + 0.5, "y": rng.randint(-30, 30) + 0.5},
                "status": rng.choice(_STATUSES),
                "distance": round(rng.uniform(1, 20), 2),
            }
            for _ in range(rng.randint(14, 24))
        ]
        prompt = 3000 + 650 * min(step_number, 150) + rng.randrange(400)  # history is truncated
        return {
            "trajectory_id": trajectory_id or self.trajectory_id(trajectory_index),
            "step_number": step_number,
            "action": code,
            "observation": {
                "stdout": self._stdout(trajectory_index, step_number),
                "error": self._error(trajectory_index, step_number),
                "inventory": _inventory(rng, step_number),
                "nearby_entities": nearby,
                "production": {
                    item: round(rng.uniform(0, 2 + step_number), 2) for item in rng.sample(_ITEMS, rng.randint(8, 16))
                },
                "current_research": research["current_research"],
                "score": self._score(trajectory_index, step_number),
                "game_tick": self._tick(trajectory_index, step_number),
            },
            "reward": self._reward(trajectory_index, step_number),
            "timestamp": _iso(self._clock(trajectory_index, step_number)),
            "tokens": {"prompt": prompt, "completion": len(code) // 4 + rng.randrange(50, 300)},
        }

    def agent_output(self, trajectory_index: int, step_number: int) -> dict[str, Any]:
        """What the agent produced: ``{"code", "reasoning", "model"}`` (``code`` is the step's
        ``action``). ``DatabaseClient.save_step`` adds the step's key."""
        _check(trajectory_index, step_number)
        rng = _rng(self.seed, "reasoning", trajectory_index, step_number)
        sentences = rng.sample(_PLANS, 3) + rng.sample(_FOLLOWUPS, 2)
        return {
            "code": self._code(trajectory_index, step_number),
            "reasoning": " ".join(sentences),
            "model": self.model(trajectory_index),
        }

    def environment_feedback(self, trajectory_index: int, step_number: int) -> dict[str, Any]:
        """What the environment answered: ``{"stdout", "error" (None or a message), "score"
        (cumulative, non-decreasing), "ticks" (game ticks the step took)}``."""
        _check(trajectory_index, step_number)
        return {
            "stdout": self._stdout(trajectory_index, step_number),
            "error": self._error(trajectory_index, step_number),
            "score": self._score(trajectory_index, step_number),
            "ticks": self._tick(trajectory_index, step_number)
            - (self._tick(trajectory_index, step_number - 1) if step_number else 0),
        }

    def checkpoint(self, trajectory_index: int, step_number: int, trajectory_id: str | None = None) -> dict[str, Any]:
        """All parts of one checkpoint: ``{"step", "agent_output", "environment_feedback",
        "game_state"}``, ready for ``DatabaseClient.save_step(step, **rest)``."""
        return {
            "step": self.step_record(trajectory_index, step_number, trajectory_id),
            "agent_output": self.agent_output(trajectory_index, step_number),
            "environment_feedback": self.environment_feedback(trajectory_index, step_number),
            "game_state": self.game_state(trajectory_index, step_number),
        }

    # -- internals ------------------------------------------------------------------------
    def _trajectory(self, index: int) -> _TrajectoryCache:
        cache = self._cache.get(index)
        if cache is not None:
            self._cache.move_to_end(index)
            return cache
        cache = self._build(index)
        self._cache[index] = cache
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cache

    def _build(self, index: int) -> _TrajectoryCache:
        rng = _rng(self.seed, "tree", index)
        ordered: list[tuple[int, str, int]] = []  # (tier, name, level)
        for tier, tier_names in enumerate(_BASE_TECHNOLOGIES):
            ordered.extend((tier, name, 1) for name in tier_names)
        for name, levels, first_tier in _SERIES:
            ordered.extend(
                (max(first_tier, _LEVEL_TIER[level]), f"{name}-{level}", level) for level in range(1, levels + 1)
            )
        ordered.sort(key=lambda item: item[0])  # stable: base first, levels in order within a tier
        initially = rng.randint(3, 8)
        technologies: dict[str, dict[str, Any]] = {}
        names: list[str] = []
        for position, (tier, name, level) in enumerate(ordered):
            if level > 1:
                prerequisites = [name.rsplit("-", 1)[0] + f"-{level - 1}"]
            elif position == 0:
                prerequisites = []
            else:
                # Only earlier technologies: researching in list order always meets prerequisites.
                prerequisites = sorted(
                    set(rng.sample(names[: max(position, 1)], min(position, 1 if rng.random() < 0.8 else 2)))
                )
            packs = list(_TIER_PACKS[tier])
            if tier >= 2 and any(word in name for word in _MILITARY):
                packs.insert(2, 2)
            low, high = _TIER_UNITS[tier]
            technologies[name] = {
                "name": name,
                "level": level,
                "researched": position < initially,
                "research_unit_count": rng.randrange(low, high + 1, 5) * (level if level > 1 else 1),
                "research_unit_energy": rng.choice(_ENERGY),
                "prerequisites": prerequisites,
                "ingredients": [{_SCIENCE[p]: 1} for p in packs],
            }
            names.append(name)
        clock_rng = _rng(self.seed, "clock", index)
        log.debug("workload seed=%d: derived trajectory %d (%d technologies)", self.seed, index, len(technologies))
        return _TrajectoryCache(
            technologies=technologies,
            order=names[initially:],
            flip_rng=_rng(self.seed, "flips", index),
            entity_rng=_rng(self.seed, "entities", index),
            growth=rng.uniform(1.3, 1.7),
            score_factor=rng.uniform(0.6, 1.4),
            clock=self.start if self.start is not None else EPOCH + clock_rng.randrange(30 * 86400),
            agents=1 if rng.random() < 0.85 else 2,
        )

    @staticmethod
    def _next_research(cache: _TrajectoryCache) -> dict[str, Any]:
        """Version ``len(cache.versions)`` of the research state: the previous one with one more
        technology researched (copy-on-change: unchanged technologies are shared)."""
        version = len(cache.versions)
        if version == 0:
            technologies = cache.technologies
        else:
            technologies = dict(cache.versions[-1]["technologies"])
            done = cache.order[version - 1]
            technologies[done] = {**technologies[done], "researched": True}
        return {
            "technologies": technologies,
            "current_research": cache.order[version] if version < len(cache.order) else None,
            "research_queue": cache.order[version + 1 : version + 3],
        }

    def _clock(self, index: int, step: int) -> float:
        """Epoch seconds of a step: ~30 s apart, strictly increasing."""
        jitter = _rng(self.seed, "jitter", index, step).random() * 10.0
        return round(self._trajectory(index).clock + 30.0 * step + jitter, 3)

    def _tick(self, index: int, step: int) -> int:
        """Cumulative game tick after a step (strictly increasing)."""
        return 600 * (step + 1) + _rng(self.seed, "tick", index, step).randrange(300)

    def _score(self, index: int, step: int) -> float:
        """Cumulative production score after a step (non-decreasing)."""
        noise = _rng(self.seed, "score", index, step).random()
        return round(self._trajectory(index).score_factor * _score_curve(step) + noise, 2)

    def _reward(self, index: int, step: int) -> float:
        previous = self._score(index, step - 1) if step else 0.0
        return round(self._score(index, step) - previous, 2)

    def _error(self, index: int, step: int) -> str | None:
        rng = _rng(self.seed, "error", index, step)
        if rng.random() >= 0.12:
            return None
        x, y = rng.randint(-30, 30) + 0.5, rng.randint(-30, 30) + 0.5
        return rng.choice(
            (
                f"Error at line {rng.randint(2, 20)}: Cannot place entity at Position(x={x}, y={y}): "
                f"an entity is in the way ({rng.choice(_ENTITY_KINDS)[0]})",
                f"Error at line {rng.randint(2, 20)}: Not enough {rng.choice(_ITEMS)} in inventory "
                f"(need {rng.randint(2, 50)}, have {rng.randint(0, 1)})",
                f'Traceback (most recent call last):\n  File "<agent>", line {rng.randint(2, 20)}, in <module>\n'
                f"AssertionError: expected furnace at Position(x={x}, y={y}) to be working",
            )
        )

    def _stdout(self, index: int, step: int) -> str:
        rng = _rng(self.seed, "stdout", index, step)
        lines = []
        for _ in range(rng.randint(8, 16)):
            x, y = rng.randint(-30, 30) + 0.5, rng.randint(-30, 30) + 0.5
            lines.append(
                rng.choice(
                    (
                        f"Placed {rng.choice(_ENTITY_KINDS)[0]} at Position(x={x}, y={y})",
                        f"Inventory: {rng.choice(_ITEMS)}={rng.randint(0, 400)}, "
                        f"{rng.choice(_ITEMS)}={rng.randint(0, 400)}",
                        f"Crafted {rng.randint(1, 20)} {rng.choice(_ITEMS)}",
                        f"Harvested {rng.randint(5, 50)} {rng.choice(_RAW_ITEMS)} from Position(x={x}, y={y})",
                        f"Furnace at Position(x={x}, y={y}) status: {rng.choice(_STATUSES)}",
                    )
                )
            )
        return "\n".join(f"{i}: {line}" for i, line in enumerate(lines, 1))

    def _code(self, index: int, step: int) -> str:
        rng = _rng(self.seed, "code", index, step)
        target = rng.randint(1000, 2000)
        lines = [f"# Step {step}: {rng.choice(_PLANS)}"]
        size = len(lines[0])
        counter = 0
        while size < target:
            counter += 1
            x, y = rng.randint(-30, 30) + 0.5, rng.randint(-30, 30) + 0.5
            proto, direction = rng.choice(_PROTOTYPES), rng.choice(_DIRECTIONS)
            var = f"{proto.lower()}_{counter}"
            block = rng.choice(
                (
                    [
                        f"{var} = place_entity(Prototype.{proto}, position=Position(x={x}, y={y}), "
                        f"direction=Direction.{direction})",
                        f'print(f"Placed {{{var}.name}} at {{{var}.position}}")',
                    ],
                    [
                        f"craft_item(Prototype.{rng.choice(_CRAFTABLE)}, quantity={rng.randint(1, 20)})",
                    ],
                    [
                        f"resource_pos = nearest(Resource.{rng.choice(_RESOURCES)})",
                        "move_to(resource_pos)",
                        f"harvest_resource(resource_pos, quantity={rng.randint(5, 50)})",
                    ],
                    [
                        f"{var} = place_entity_next_to(Prototype.{proto}, reference_position=Position(x={x}, y={y}), "
                        f"direction=Direction.{direction}, spacing={rng.randint(0, 2)})",
                        f"insert_item(Prototype.Coal, {var}, quantity={rng.randint(1, 10)})",
                    ],
                    [
                        "inventory = inspect_inventory()",
                        f"assert inventory[Prototype.{rng.choice(_CRAFTABLE)}] >= {rng.randint(0, 10)}, "
                        '"not enough items"',
                    ],
                    [
                        f"connect_entities(Position(x={x}, y={y}), Position(x={x + rng.randint(-9, 9)}, "
                        f"y={y + rng.randint(-9, 9)}), connection_type=Prototype.TransportBelt)",
                    ],
                )
            )
            lines.extend(block)
            size += sum(len(line) + 1 for line in block)
        return "\n".join(lines)


def _score_curve(step: int) -> float:
    return 12.5 * math.pow(step, 1.4)


def _new_entity(rng: random.Random, number: int) -> _Entity:
    name, size, _ = rng.choices(_ENTITY_KINDS, weights=_ENTITY_WEIGHTS)[0]
    half = size / 2
    # A factory grows outwards from the origin.
    spread = 6 + number // 2
    return _Entity(
        name=name,
        x=rng.randint(-spread, spread) + half,
        y=rng.randint(-spread, spread) + half,
        direction=rng.choice((0, 2, 4, 6)),
        size=size,
    )


def _inventory(rng: random.Random, step: int) -> dict[str, int]:
    kinds = min(len(_ITEMS), 8 + step // 4)
    return {item: rng.randint(0, 50 + 10 * step) for item in rng.sample(_ITEMS, kinds)}


def _namespace(seed: int, index: int, agent: int, step: int) -> str:
    """Base64 of a pickle of the agent's variables (they accumulate over the steps)."""
    rng = _rng(seed, "namespace", index, agent, step)
    variables: dict[str, Any] = {}
    for n in range(min(MAX_VARIABLES, 1 + step // 2)):
        kind = n % 3
        if kind == 0:
            variables[f"pos_{n}"] = (float(rng.randint(-30, 30)) + 0.5, float(rng.randint(-30, 30)) + 0.5)
        elif kind == 1:
            variables[f"count_{n}"] = rng.randint(0, 500)
        else:
            variables[f"entity_{n}"] = rng.choice(_ENTITY_KINDS)[0]
    return base64.b64encode(pickle.dumps(variables, protocol=4)).decode("ascii")


def _iso(epoch_seconds: float) -> str:
    return iso(round(epoch_seconds * 1_000_000))


def _check(trajectory_index: int, step_number: int) -> None:
    for name, value in (("trajectory_index", trajectory_index), ("step_number", step_number)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


__all__ = ["Workload"]
