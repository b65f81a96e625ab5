"""The page to look at recommendations (/ui) in a real headless Chromium: pick a user, find k cards whose
item ids are the API's answer, compare two served runs side by side; and the routes the page stands on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import llmrec
from llmrec.serve import ServeSettings, create_app
from test_serve import make_run, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ui")
    sasrec = make_run(root)
    popularity = llmrec.train(
        "popularity", data=str(root / "ds"), out=root / "popularity", eval={"ctr": False, "ks": [5]}
    ).dir
    return sasrec, popularity


@pytest.fixture(scope="module")
def models(runs):
    return {"sasrec": llmrec.load(runs[0], device="cpu"), "popularity": llmrec.load(runs[1], device="cpu")}


def test_models_users_history_and_model_choice(models):
    with TestClient(create_app(models)) as c:
        served = c.get("/models").json()
        assert [m["name"] for m in served["models"]] == ["sasrec", "popularity"]
        assert served["default"] == "sasrec"
        users = c.get("/users", params={"prefix": "u1", "limit": 3}).json()
        assert users["users"] == ["u1", "u10", "u11"] and users["total"] == 11
        who = c.get("/users/u3").json()
        expected = models["sasrec"].sequences[models["sasrec"].user_index["u3"]]
        assert [x["item_id"] for x in who["history"]] == [models["sasrec"].item_ids[i] for i in expected]
        default = c.post("/recommend", json={"user_id": "u3", "k": 4}).json()
        assert default["model"] == "sasrec"
        other = c.post("/recommend", json={"user_id": "u3", "k": 4, "model": "popularity"}).json()
        assert other["model"] == "popularity"
        expected = models["popularity"].recommend(user_ids=["u3"], k=4)["item_id"].tolist()
        assert [x["item_id"] for x in other["items"]] == expected
        bad = c.post("/recommend", json={"user_id": "u3", "model": "nope"})
        assert bad.status_code == 404 and bad.json()["field"] == "model"
        assert c.get("/users/nobody").status_code == 404
        assert c.get("/items/i001/image").status_code == 404  # the synthetic catalog has no pictures
        assert c.get("/health").json()["models"] == ["sasrec", "popularity"]


def test_the_page_can_be_turned_off(models):
    with TestClient(create_app(models["sasrec"], ServeSettings(ui=False))) as c:
        assert c.get("/ui").status_code == 404
    with TestClient(create_app(models["sasrec"])) as c:
        page = c.get("/ui").text
        assert "<script>" in page and "://" not in page.split("<script>")[0]  # no remote asset


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")
def test_the_page_in_headless_chromium(models, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    with running(create_app(models)) as (_, url):
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(30)
            driver.get(f"{url}/ui")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
            driver.find_element(By.ID, "user").send_keys("u3")
            driver.find_element(By.ID, "k").clear()
            driver.find_element(By.ID, "k").send_keys("5")
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".top .card")) == 5)
            shown = [
                e.get_attribute("data-item-id") for e in driver.find_elements(By.CSS_SELECTOR, ".top .card")
            ]
            expected = models["sasrec"].recommend(user_ids=["u3"], k=5)["item_id"].tolist()
            assert shown == expected
            history = driver.find_elements(By.CSS_SELECTOR, ".history .card")
            assert len(history) == len(models["sasrec"].sequences[models["sasrec"].user_index["u3"]])

            # two runs side by side, with a filter the API has
            driver.find_element(By.CSS_SELECTOR, "#compare option[value=popularity]").click()
            driver.find_element(By.ID, "exclude-items").send_keys(expected[0])
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column")) == 2)
            columns = driver.find_elements(By.CSS_SELECTOR, ".column")
            assert [c.get_attribute("data-model") for c in columns] == ["sasrec", "popularity"]
            for column in columns:
                ids = [
                    e.get_attribute("data-item-id")
                    for e in column.find_elements(By.CSS_SELECTOR, ".top .card")
                ]
                assert len(ids) == 5 and expected[0] not in ids
            shot = tmp_path / "ui.png"
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 500 and pixels.std() > 10, "the screenshot is blank"
