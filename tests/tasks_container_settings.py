"""Django settings inside the image of the Docker test of ``ContainerTaskBackend``: no database,
only what the task runner needs to import the tasks (their backend's settings)."""

SECRET_KEY = "tasks-container-test-only"
INSTALLED_APPS: list[str] = []
USE_TZ = True
TASKS = {
    "default": {
        "BACKEND": "container_manager.tasks.ContainerTaskBackend",
        "OPTIONS": {"IMAGE": "the image this runs in"},
    }
}
