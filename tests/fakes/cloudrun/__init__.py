"""A local fake of the Cloud Run Admin API v2 (REST), for driving the real ``google-cloud-run`` client.

Start it, point ``ClientOptions(api_endpoint=fake.url)`` (with ``AnonymousCredentials``, REST
transport) at it, and the real ``JobsClient``/``ExecutionsClient``/``TasksClient`` talk to it as
they would to ``run.googleapis.com``; the real ``google-cloud-logging`` client reads the job's
log entries from the same server::

    with FakeCloudRun(time_scale=0.2) as fake:
        executor = CloudRunExecutor.from_config(fake.connection_string, fake.executor_config(), "t")

``service`` says what it reproduces, ``resources`` the resources' JSON, ``behaviour`` how a
task's outcome is scripted, ``logging_api`` the Cloud Logging side, ``wire`` the JSON and HTTP.
"""

from tests.fakes.cloudrun import logging_api
from tests.fakes.cloudrun.behaviour import Behaviour, behaviour_from_argv, parse_behaviour
from tests.fakes.cloudrun.service import FakeCloudRun

__all__ = ["Behaviour", "FakeCloudRun", "behaviour_from_argv", "logging_api", "parse_behaviour"]
