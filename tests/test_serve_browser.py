"""The web page in a real browser: headless Chromium driven by Selenium against a real uvicorn on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``;
``.ci/run`` installs them); skipped with the reason when they are absent. Selenium downloads nothing
(``SE_OFFLINE=true``)."""
from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from servekit import LiveServer, build_gallery, calibrated_model, png_bytes  # noqa: E402
from siamsearch.gallery import Gallery  # noqa: E402
from siamsearch.serve import ServeConfig  # noqa: E402
from siamsearch.serve.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Chromium and chromedriver are not installed "
                                "(apt-get install -y chromium chromium-driver)")
TIMEOUT = 60


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    os.environ["SE_OFFLINE"] = "true"
    opts = Options()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):  # a test-pattern webcam
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, fn, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT).until(lambda d: fn(d), message=f"waited {TIMEOUT} s for {what}")


def test_page_verifies_searches_and_enrols(tmp_path, browser):
    from selenium.webdriver.common.by import By

    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    with Gallery.open(index) as g:
        a, b, label_a = g.paths[0], g.paths[5], g.label_names[g.labels[0]]
    app = create_app(ServeConfig(model=str(model), indexes=(str(index),)))
    from fastapi.testclient import TestClient

    api = TestClient(app)
    want = api.post("/api/v1/verify", files={"image_a": open(a, "rb"), "image_b": open(b, "rb")}).json()
    with LiveServer(app) as url:
        d = browser
        d.get(url + "/")
        _wait(d, lambda d: "people (12 images" in d.find_element(By.ID, "gallery-select").get_attribute("innerHTML"),
              "the gallery list")
        assert "threshold 0.5000" in d.find_element(By.ID, "calibration").text
        # verify: two uploads -> the verdict and the distance the API gives
        d.find_element(By.ID, "file-a").send_keys(a)
        d.find_element(By.ID, "file-b").send_keys(b)
        d.find_element(By.ID, "verify-btn").click()
        verdict = _wait(d, lambda d: d.find_elements(By.ID, "verdict"), "the verdict")[0]
        assert verdict.text == ("SAME" if want["is_same"] else "DIFFERENT")
        assert f"distance {want['distance']:.4f}" in d.find_element(By.ID, "verify-result").text
        assert "FAR" in d.find_element(By.ID, "verify-result").text
        # search: thumbnails of the neighbours, the query image itself first
        d.find_element(By.CSS_SELECTOR, '.tab[data-tab="search"]').click()
        d.find_element(By.ID, "k").clear()
        d.find_element(By.ID, "k").send_keys("4")
        d.find_element(By.ID, "open-set").click()  # closed set: the nearest neighbour's label
        d.find_element(By.ID, "file-q").send_keys(a)
        d.find_element(By.ID, "search-btn").click()
        _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".neighbor")) == 4, "4 neighbour cards")
        _wait(d, lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                               for img in d.find_elements(By.CSS_SELECTOR, ".neighbor img")), "thumbnails")
        first = d.find_elements(By.CSS_SELECTOR, ".neighbor")[0].text
        assert label_a in first and "d = 0.0000" in first
        assert label_a in d.find_element(By.ID, "prediction").text
        # enrol a new identity, then find it
        new = tmp_path / "newface.png"
        new.write_bytes(png_bytes(4242))
        d.find_element(By.CSS_SELECTOR, '.tab[data-tab="gallery"]').click()
        d.find_element(By.ID, "enrol-identity").send_keys("newcomer")
        d.find_element(By.ID, "enrol-files").send_keys(str(new))
        d.find_element(By.ID, "enrol-btn").click()
        _wait(d, lambda d: "enrolled 1 image" in d.find_element(By.ID, "enrol-status").text, "the enrolment")
        d.find_element(By.CSS_SELECTOR, '.tab[data-tab="search"]').click()
        d.find_element(By.ID, "file-q").send_keys(str(new))
        d.find_element(By.ID, "search-btn").click()
        _wait(d, lambda d: "newcomer" in d.find_element(By.ID, "prediction").text, "the new identity found")
        # the webcam as an image source: Chromium's fake camera, one frame captured into the query slot
        d.find_element(By.CSS_SELECTOR, '#drop-q .cam').click()
        _wait(d, lambda d: d.execute_script("return document.getElementById('camera-video').videoWidth") > 0,
              "the camera stream")
        d.find_element(By.ID, "camera-snap").click()
        _wait(d, lambda d: "has" in d.find_element(By.ID, "drop-q").get_attribute("class")
              and "blob:" in d.find_element(By.CSS_SELECTOR, "#drop-q img").get_attribute("src"), "the captured frame")
        d.find_element(By.ID, "search-btn").click()
        _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".neighbor")) == 4, "results for the webcam frame")
        # the map draws the gallery's points
        d.find_element(By.CSS_SELECTOR, '.tab[data-tab="map"]').click()
        _wait(d, lambda d: "13 of 13 images" in d.find_element(By.ID, "map-legend").text, "the embedding map")
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no failed request, no script error
        # the API docs render offline (Swagger UI from the package's own files)
        d.get(url + "/docs")
        _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"), "Swagger UI's operations")
        assert "/api/v1/galleries/{name}/search" in d.page_source
