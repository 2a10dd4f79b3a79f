import pytest

from co2sam.app.settings import AppSettings, AppSettingsError


def test_defaults_bind_this_machine_without_warning_and_open_the_demo():
    settings = AppSettings()
    assert settings.host == "127.0.0.1" and settings.host_warning() is None
    assert settings.demo
    assert settings.max_file_bytes == 20 * 1024 * 1024


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "my-server"])
def test_another_host_is_warned_about(host):
    warning = AppSettings(host=host).host_warning()
    assert warning is not None and host in warning
    assert "reachable from other machines" in warning and "no login" in warning


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 0}, "--port"),
        ({"port": 70000}, "--port"),
        ({"max_file_mb": 0}, "--max-file-size"),
        ({"max_pixels": 0}, "--max-pixels"),
        ({"host": " "}, "--host"),
        ({"adapter": "nowhere"}, "not an adapter folder"),
        ({"segmenter": "nowhere"}, "not a segmenter folder"),
        ({"review": ["nowhere"]}, "co2sam pseudo-labels"),
        ({"runs": ["nowhere"]}, "co2sam train --out"),
        ({"data_root": "nowhere"}, "--data-root"),
    ],
)
def test_bad_settings_are_refused_with_the_option_named(values, message):
    with pytest.raises(AppSettingsError, match=message):
        AppSettings(**values)


def test_the_run_tab_defaults_to_the_adapters_run(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "csv").mkdir()
    (run / "config.yaml").write_text("train: {}\n")
    (run / "best" / "co2sam_adapter.json").write_text("{}")
    settings = AppSettings(adapter=str(run / "best"))
    assert not settings.demo
    assert settings.run_folders() == [str(run.resolve())]
    assert AppSettings(adapter=str(run / "best"), runs=[str(tmp_path)]).run_folders() == [
        str(tmp_path)
    ]


def test_a_segmenter_folder_is_taken_and_is_not_the_demo(tmp_path):
    (tmp_path / "co2sam_segmenter.json").write_text("{}")
    settings = AppSettings(segmenter=str(tmp_path))
    assert settings.segmenter == str(tmp_path) and not settings.demo
