import os


def test_the_app_process_never_runs_ghostscript_on_an_upload():
    from PIL import EpsImagePlugin

    from co2sam.app.gradio_env import prepare_gradio_environment

    prepare_gradio_environment()
    assert not EpsImagePlugin.has_ghostscript()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # no telemetry, no version check
    assert os.path.isdir(os.environ["GRADIO_TEMP_DIR"])
