"""Watch everything that serves a rollout in progress: the router, the stable and the
candidate, at most once per analysis interval (and at once when a step hit a platform
error). What is repaired and what is blamed are kept apart:

- a dead **router** is started again (on its port, by the local platform) and given the
  split the state records: callers are back within one interval;
- a dead **stable** is restarted: it is the known-good version, and its death says
  nothing about the candidate. If it cannot be restarted the rollout pauses, naming it;
  the candidate is never rolled back for it;
- a dead **candidate** is the one fault that ends the rollout (rolled back, as before).

Every repair is an event (``repaired``) with what was found, so `rollout status` and the
history say what happened and when."""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.engine.run import Run
from rollout.errors import BadInput, DeployError, PlatformError
from rollout.steps import ScaleDownStep


@dataclass(frozen=True)
class Findings:
    """What one look at the serving side found and did."""

    repaired: list[str] = field(default_factory=list)  # one line per repair done
    candidate_down: str | None = None  # the candidate is not ready: the rollout must roll back
    stable_down: str | None = None  # the stable is down and could not be restarted: pause
    router_down: str | None = None  # the router is down and could not be restarted: pause

    @property
    def blocked(self) -> str | None:
        """Why the rollout cannot go on without blaming the candidate (it pauses)."""
        return self.stable_down or self.router_down


def _candidate_expected(run: Run) -> bool:
    r = run.rollout
    return not any(isinstance(s, ScaleDownStep) and s.version == "candidate" for s in r.plan[:r.step_index])


def look(run: Run) -> Findings:
    """Check router, stable and candidate; repair the router and the stable."""
    from rollout.engine import lifecycle

    r = run.rollout
    platform = run.platform
    repaired: list[str] = []
    where = f"at step {r.step_index + 1}"
    if _candidate_expected(run):
        health = platform.health(r.candidate.version)
        if not health.ready:
            return Findings(candidate_down=f"candidate {r.candidate.version} stopped being ready {where}: {health.detail}")
    stable_restarted = False
    if r.stable is not None and not r.promoted:
        health = platform.health(r.stable.version)
        if not health.ready:
            try:
                platform.deploy(r.stable.to_model_version(run.model), run.replicas())
            except (DeployError, PlatformError, BadInput) as exc:
                return Findings(stable_down=f"stable {r.stable.version} is down ({health.detail}) and could not be "
                                            f"restarted {where}: {exc}")
            stable_restarted = True
            repaired.append(f"stable {r.stable.version} was down ({health.detail}); restarted {where}. "
                            f"Not held against candidate {r.candidate.version}")
    router = platform.router_health()
    if not router.ready or stable_restarted:
        try:
            platform.set_traffic(lifecycle.recorded_traffic(r))
        except (PlatformError, BadInput) as exc:
            for line in repaired:
                run.emit("repaired", line, r.step_index)
            return Findings(repaired=repaired, router_down=f"the router could not be given the recorded split {where} "
                                                           f"({router.detail}): {exc}")
        if not router.ready:
            split = f"{r.candidate.version} at {100 if r.promoted else r.traffic.weight}%"
            if r.traffic.mirror and not r.promoted:
                split += f", mirror {r.traffic.mirror}% to it"
            repaired.append(f"router was down ({router.detail}); restarted {where} with the recorded split ({split})")
    for line in repaired:
        run.emit("repaired", line, r.step_index)
    if repaired:
        run.save()
    return Findings(repaired=repaired)


def restore_split(run: Run) -> list[str]:
    """The recorded split back on the router if it serves another (or none): what a
    start of a rollout paused for `rollout promote` does after ``ensure_running``. A
    router brought back after `rollout local down` or a reboot starts on the stable
    alone, and no look of the reconciler runs during a manual pause to notice."""
    from rollout.engine import lifecycle

    r = run.rollout
    wanted = lifecycle.recorded_traffic(r)
    router = run.platform.router_health()
    current = run.platform.get_traffic() if router.ready else None
    if current == wanted:
        return []
    run.platform.set_traffic(wanted)
    served = "nothing" if current is None else current.describe()
    line = f"the router served {served}, not the recorded split; put back {wanted.describe()}"
    run.emit("repaired", line, r.step_index)
    return [line]


def restore_stable(run: Run) -> list[str]:
    """With no rollout in progress, the recorded stable back in service if it is not: its
    server gone (a kill, `rollout local down`, a reboot) or the router gone or pointing
    elsewhere. What `rollout start <model>:<stable>` does instead of nothing, so a model
    can always be brought back with the command that first deployed it."""
    from rollout.platforms.base import Traffic

    stable = run.ms.stable
    assert stable is not None
    platform = run.platform
    done: list[str] = []
    health = platform.health(stable.version)
    if not health.ready:
        platform.deploy(stable.to_model_version(run.model), run.replicas())
        done.append(f"stable {stable.version} was not running ({health.detail}); started it")
    router = platform.router_health()
    wanted = Traffic(stable.version, None, 0, 0)
    current = platform.get_traffic() if router.ready else None
    # A candidate at weight 0 is no traffic of its own (an old version kept for a rollback).
    served = current is not None and current.stable == stable.version and not current.weight and not current.mirror
    if not router.ready or done or not served:
        platform.set_traffic(wanted)
        if not router.ready:
            done.append(f"the router was not serving ({router.detail}); started it with all traffic on "
                        f"{stable.version}")
        else:
            done.append(f"traffic put back on {stable.version}")
    return done
