"""Who feeds whom in the relay (``launcher.run.relay``): chains at the start, and the way around a host that stopped
forwarding. Pure: what the launcher knows of each host in, the new feeds out.

The launcher feeds the head of each chain; every other host is fed by the host before it. Every relay program says
how much it has at least once a second, so the launcher can tell a host that is waiting from one that is stuck:
- a host silent for a deadline is stuck: it is dropped (its program ended), and so is a host whose program ended;
- the hosts a dropped host fed are fed by its nearest good ancestor, the launcher at the top;
- a host that got nothing for a deadline while its feed had bytes it lacks is moved the same way, and its feed is a
  bad relay from then on (it feeds nobody more); if the host was moved before, or its feed is the launcher, the
  fault is its own, and it is dropped instead. So a stuck host costs the others one deadline, and a host that
  takes nothing cannot walk up its chain making every host above it a bad relay.
A dropped host gets its files from staging, straight from the launcher.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

LAUNCHER = ""  # the feed of a chain's head
STEP_BYTES = 1 << 20  # "got nothing": less than this (a host creeping a byte at a time is as stuck as a silent one)


def chains(hosts: Sequence[str], count: int) -> dict[str, str]:
    """Each host's feed: ``hosts`` in ``count`` chains of consecutive hosts (the hosts file's order keeps racks
    together), each head fed by the launcher.

    >>> chains(["h1", "h2", "h3", "h4", "h5"], 2)
    {'h1': '', 'h2': 'h1', 'h3': 'h2', 'h4': '', 'h5': 'h4'}
    >>> chains(["h1", "h2"], 3)
    {'h1': '', 'h2': ''}
    """
    count = max(1, min(count, len(hosts)))
    size, extra = divmod(len(hosts), count)
    feeds, start = {}, 0
    for chain in range(count):
        end = start + size + (chain < extra)
        for position in range(start, end):
            feeds[hosts[position]] = LAUNCHER if position == start else hosts[position - 1]
        start = end
    return feeds


def stepped(since: int, have: int, total: int | None) -> bool:
    """Whether a host that had ``since`` bytes of the stream and has ``have`` now moved on: by ``STEP_BYTES`` or to
    the end. Its deadline runs from the last step, so a host taking a few bytes at a time counts as taking nothing.

    >>> stepped(0, 1 << 20, None), stepped(0, 1000, None), stepped(0, 1000, 1000), stepped(5 << 20, (6 << 20) - 1, None)
    (True, False, True, False)
    """
    return have - since >= STEP_BYTES or have == total


@dataclasses.dataclass(frozen=True)
class HostState:
    """What the launcher last heard from one host of the relay."""

    have: int            # the stream's first bytes it holds
    still_s: float       # seconds since ``have`` last grew by a step (``stepped``), or since its feed changed
    quiet_s: float       # seconds since it last said anything
    ended: bool          # its relay program ended (killed, lost, failed), or was dropped
    moved: bool = False  # it was moved before because it got nothing


@dataclasses.dataclass(frozen=True)
class Reroute:
    host: str
    was: str             # its feed before (a host, or LAUNCHER)
    now: str | None      # its feed from now on (a host, or LAUNCHER); None: dropped
    why: str             # "h2 ended", "h2 stopped forwarding", "took nothing for 5 s"
    stalled: bool = False  # moved because it got nothing from a feed that had more (a second time drops it)


@dataclasses.dataclass(frozen=True)
class Routes:
    feeds: dict[str, str]            # each host's feed
    bad: frozenset[str]              # hosts that feed nobody more
    changes: tuple[Reroute, ...]     # this step's moves and drops

    @property
    def dropped(self) -> list[str]:
        return [change.host for change in self.changes if change.now is None]


def reroute(feeds: Mapping[str, str], states: Mapping[str, HostState], bad: frozenset[str], *, total: int,
            deadline_s: float) -> Routes:
    """The feeds after routing around every host that ended, went silent or stopped forwarding.

    >>> feeds = chains(["h1", "h2", "h3", "h4"], 1)
    >>> def state(have, still_s=0.0, quiet_s=0.0, ended=False, moved=False):
    ...     return HostState(have, still_s, quiet_s, ended, moved)
    >>> def show(routes):
    ...     return routes.feeds, sorted(routes.bad), [(c.host, c.now, c.why) for c in routes.changes]

    h2's program ended: h3 is fed by h1, whatever h3 has.
    >>> show(reroute(feeds, {"h1": state(90), "h2": state(40, ended=True), "h3": state(30), "h4": state(30)},
    ...              frozenset(), total=100, deadline_s=5))
    ({'h1': '', 'h2': 'h1', 'h3': 'h1', 'h4': 'h3'}, ['h2'], [('h3', 'h1', 'h2 ended')])

    h2 is silent (stopped, hung): it is dropped, and h3 moves above it.
    >>> show(reroute(feeds, {"h1": state(90), "h2": state(40, 6, 6), "h3": state(40, 6), "h4": state(40, 6)},
    ...              frozenset(), total=100, deadline_s=5))
    ({'h1': '', 'h2': 'h1', 'h3': 'h1', 'h4': 'h3'}, ['h2'], [('h2', None, 'said nothing for 5 s'), ('h3', 'h1', 'h2 said nothing for 5 s')])

    h2 answers but forwards nothing: h3, which got nothing, moves to h1 and h2 feeds nobody; h4, which has what
    h3 has, waits. Had h3 been moved before, the fault would be its own.
    >>> show(reroute(feeds, {"h1": state(90), "h2": state(60), "h3": state(20, 6), "h4": state(20, 6)},
    ...              frozenset(), total=100, deadline_s=5))
    ({'h1': '', 'h2': 'h1', 'h3': 'h1', 'h4': 'h3'}, ['h2'], [('h3', 'h1', 'h2 stopped forwarding')])
    >>> show(reroute(feeds, {"h1": state(90), "h2": state(60), "h3": state(20, 6, moved=True), "h4": state(20)},
    ...              frozenset(), total=100, deadline_s=5))
    ({'h1': '', 'h2': 'h1', 'h3': 'h2', 'h4': 'h2'}, ['h3'], [('h3', None, 'took nothing for 5 s'), ('h4', 'h2', 'h3 took nothing for 5 s')])
    """
    feeds, bad, changes = dict(feeds), set(bad), []
    gone = {host: f"{host} ended" for host, state in states.items() if state.ended}
    for host, state in states.items():
        if host in gone or state.have >= total:
            continue
        feed_has = total if feeds[host] == LAUNCHER else states[feeds[host]].have
        why = (f"said nothing for {deadline_s:.0f} s" if state.quiet_s >= deadline_s else
               f"took nothing for {deadline_s:.0f} s" if state.still_s >= deadline_s and feed_has > state.have
               and (state.moved or feeds[host] == LAUNCHER) else None)
        if why:
            gone[host] = f"{host} {why}"
            changes.append(Reroute(host, feeds[host], None, why))
    bad |= gone.keys()
    for host, feed in list(feeds.items()):
        if host in gone or feed == LAUNCHER or states[host].have >= total:
            continue
        if feed in gone:
            why = gone[feed]
        elif states[feed].have > states[host].have and states[host].still_s >= deadline_s:
            why = f"{feed} stopped forwarding"
            bad.add(feed)
        else:
            continue
        feeds[host] = _good_ancestor(feed, feeds, bad)
        changes.append(Reroute(host, feed, feeds[host], why, stalled=feed not in gone))
    return Routes(feeds, frozenset(bad), tuple(changes))


def _good_ancestor(host: str, feeds: Mapping[str, str], bad: set[str]) -> str:
    """The nearest host above ``host`` that still forwards, or the launcher."""
    above = feeds[host]
    while above != LAUNCHER and above in bad:
        above = feeds[above]
    return above


def next_hosts(feeds: Mapping[str, str]) -> dict[str, list[str]]:
    """The hosts each host (or LAUNCHER) feeds, in order.

    >>> next_hosts({"h1": "", "h2": "h1", "h3": "h1"})
    {'': ['h1'], 'h1': ['h2', 'h3']}
    """
    fed: dict[str, list[str]] = {}
    for host, feed in feeds.items():
        fed.setdefault(feed, []).append(host)
    return fed
