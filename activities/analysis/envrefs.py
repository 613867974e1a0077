"""`${env.X}` in a canary analysis's URLs, resolved on the worker as in a check step.

Only what the flow's author wrote is resolved (text from run arguments reaches the
worker escaped, see `shipflow.activities.envrefs`). The resolved strategy goes to the
local runtime over loopback or stays in the worker's memory; measurement messages name
an endpoint by scheme and host only, so a credential in a URL is never shown.
"""

from __future__ import annotations

from shipflow.activities.envrefs import resolve_env, resolve_env_in
from shipflow.workflows.spec import AnalysisStep, Strategy


def resolve_analysis_env(strategy: Strategy) -> Strategy:
    """The strategy with every analysis's http URL and headers and Prometheus URL resolved.

    Raises:
        ApplicationError: (non-retryable) a referenced variable is not set on the worker.
    """
    if strategy.canary is None or "${" not in strategy.model_dump_json():
        return strategy
    steps = []
    for step in strategy.canary.steps:
        if isinstance(step, AnalysisStep):
            analysis = step.analysis
            if analysis.http is not None:
                analysis = analysis.model_copy(update={"http": analysis.http.model_copy(update={
                    "url": resolve_env(analysis.http.url),
                    "headers": resolve_env_in(analysis.http.headers),
                })})
            if analysis.prometheus is not None:
                analysis = analysis.model_copy(update={"prometheus": analysis.prometheus.model_copy(
                    update={"url": resolve_env(analysis.prometheus.url)}
                )})
            step = AnalysisStep(analysis=analysis)
        steps.append(step)
    return strategy.model_copy(update={"canary": strategy.canary.model_copy(update={"steps": steps})})
