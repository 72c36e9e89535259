"""External face-age data in training (mcls.train.pretrain): the leak guard runs first, the kept adults pretrain the
gender/age backbone once, and every fold's face tasks start from it while the mask task keeps its own start."""
import json
import shutil

import pytest
import torch
from conftest import ROOT, SAMPLE, TINY

from mcls.config import Config, ConfigError
from mcls.data import embeddings
from mcls.model.checkpoint import load_face_weights
from mcls.model.classifier import model_from_config
from mcls.runs.layout import Run
from mcls.train.preflight import check_references
from mcls.train.pretrain import external_lines, prepare_external

EXTERNAL = ROOT / "data" / "external-sample"
needs_dlib = pytest.mark.skipif(not embeddings.available(), reason="dlib and its model files are not installed")


def _cfg(tmp_path, **keys):
    caches = dict(crop_cache=str(tmp_path / "crops"), image_cache=str(tmp_path / "images"),
                  pretrain_cache=str(tmp_path / "pretrained"))
    return Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "run"), **TINY).updated(
        {"external_data": str(EXTERNAL), "external_epochs": 1, **caches, **keys})


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("heads", ["mask_apart", "multi", "separate", "single"])
def test_pretrained_weights_start_the_face_tasks_and_leave_the_mask_task_alone(tmp_path, heads):
    cfg = Config(**TINY).updated({"heads": heads})
    donor = model_from_config(cfg.updated({"heads": "multi"}))
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)  # unlike any fresh start
    path = tmp_path / "face.pt"
    torch.save({"backbone_name": cfg.backbone, "backbone": donor.face_backbone().state_dict(),
                "heads": {h: donor.heads[h].state_dict() for h in ("gender", "age")}}, path)
    model = model_from_config(cfg)
    before = _state(model)
    load_face_weights(model, path)
    after = _state(model)
    face_heads = [h for h in ("gender", "age") if h in model.heads]
    for h in face_heads:
        assert _same(model.backbone_for(h).state_dict(), donor.face_backbone().state_dict())
        assert _same(model.heads[h].state_dict(), donor.heads[h].state_dict())
    if heads == "single":  # the 18-way head mixes the mask state in: only the backbone starts pretrained
        assert _same(model.face_backbone().state_dict(), donor.face_backbone().state_dict())
        assert _same({k: after[k] for k in after if k.startswith("heads.")},
                     {k: before[k] for k in before if k.startswith("heads.")})
    else:
        untouched = [k for k in before if k.startswith(("heads.mask", "backbones.mask"))]
        assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)


def test_a_backbone_of_another_architecture_is_refused_naming_the_file(tmp_path):
    cfg = Config(**TINY)
    other = model_from_config(cfg.updated({"heads": "multi", "backbone": "mobilenetv2_050"}))
    path = tmp_path / "face.pt"
    torch.save({"backbone_name": "mobilenetv2_050", "backbone": other.face_backbone().state_dict(), "heads": {}}, path)
    with pytest.raises(ValueError, match=r"face\.pt: a pretrained mobilenetv2_050 backbone does not fit"):
        load_face_weights(model_from_config(cfg), path)


@needs_dlib
def test_the_preset_trains_end_to_end_and_a_second_run_takes_the_pretraining_from_the_cache(tmp_path, capsys,
                                                                                            face_cache):
    from mcls.cli import main

    caches = [f"crop_cache={face_cache}", f"image_cache={tmp_path / 'images'}",
              f"pretrain_cache={tmp_path / 'pretrained'}"]
    tiny = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in TINY.items()]
    main(["train", "--config", "external", f"data_dir={SAMPLE}", f"run_dir={tmp_path / 'a'}", "smoke=true",
          *tiny, *caches])
    run = Run(tmp_path / "a")
    assert run.fold(0).best.is_file() and run.pretrained_face.is_file()
    for name in ("leak_pairs.csv", "leak_pairs.png", "nearest_distance.png", "external_kept.csv"):
        assert (run.external_dir / name).is_file(), name
    record = json.loads(run.external_record.read_text())
    assert record["leak_guard"].startswith(f"kept {record['n_kept']} of 24 external faces; left out 0 under 18, ")
    assert record["n_trained"] == record["n_kept"] == 24 - sum(record["left_out"].values())
    assert record["epochs"] == 1 and "from_cache" not in record
    assert sum(record["ages"].values()) == record["n_trained"]
    lines = external_lines(run)
    assert lines[0] == f"external data data/external-sample: {record['leak_guard']}"
    assert f"the {record['n_trained']} faces kept" in lines[1] and "for 1 epoch in" in lines[1]

    main(["train", "--config", "external", f"data_dir={SAMPLE}", f"run_dir={tmp_path / 'b'}", "smoke=true",
          *tiny, *caches])
    again = json.loads(Run(tmp_path / "b").external_record.read_text())
    assert again["from_cache"].endswith(f"{record['key']}.pt") and again["key"] == record["key"]
    assert "taken from the cache" in external_lines(Run(tmp_path / "b"))[1]
    saved = [torch.load(r.pretrained_face, weights_only=True)["backbone"] for r in (run, Run(tmp_path / "b"))]
    assert _same(*saved)


@needs_dlib
def test_faces_under_the_minimum_age_are_left_out_and_counted(tmp_path, face_cache):
    ext = tmp_path / "ext"
    shutil.copytree(EXTERNAL, ext)
    young = sorted(ext.glob("*.jpg"))[:3]
    for i, path in enumerate(young):
        path.rename(path.with_name(f"{5 + i}_" + path.name.split("_", 1)[1]))
    cfg = _cfg(tmp_path, external_data=str(ext), crop_cache=face_cache)
    prepare_external(cfg, Run(cfg.run_dir))
    record = json.loads(Run(cfg.run_dir).external_record.read_text())
    assert record["left_out"]["young"] == 3 and record["n_external"] == 24
    assert record["n_trained"] + sum(record["left_out"].values()) == 24 and "left out 3 under 18," in record["leak_guard"]


def test_external_keys_act_only_with_external_data_and_bad_sets_stop_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match=r"external_epochs=2 act only with external_data"):
        Config().updated({"external_epochs": 2})
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(next(EXTERNAL.glob("*.jpg")), bad / "holiday.jpg")
    cfg = _cfg(tmp_path, external_data=str(bad))
    with pytest.raises(ConfigError, match=r"external_data=.*holiday\.jpg: not a UTKFace name"):
        check_references(cfg)
    with pytest.raises(ConfigError, match=r"no face is aged 99 or over \(external_min_age\)"):
        check_references(_cfg(tmp_path, external_min_age=99))
    assert not (tmp_path / "run").exists()


def test_the_pretraining_cache_key_covers_labels_and_starting_weights_and_a_weights_file_needs_its_record(tmp_path):
    import pandas as pd

    from mcls.data.faces import CropSettings
    from mcls.train.pretrain import cache_entry, pretrain_key

    cfg = _cfg(tmp_path)
    rows = pd.DataFrame({"path": sorted(str(p) for p in EXTERNAL.glob("*.jpg"))[:4], "age": [30, 40, 50, 60],
                         "gender": [0, 1, 0, 1]})
    crop = CropSettings.from_config(cfg)
    key = pretrain_key(cfg, rows, crop)
    assert pretrain_key(cfg, rows.assign(age=[30, 40, 50, 61]), crop) != key
    assert pretrain_key(cfg, rows.assign(gender=[1, 1, 0, 1]), crop) != key
    start = tmp_path / "start.pt"
    start.write_bytes(b"one")
    with_file = pretrain_key(cfg.updated({"pretrained": str(start)}), rows, crop)
    start.write_bytes(b"two")  # same path, other content
    assert pretrain_key(cfg.updated({"pretrained": str(start)}), rows, crop) != with_file != key

    weights = tmp_path / "cache" / f"{key}.pt"
    weights.parent.mkdir()
    torch.save({"backbone": {}}, weights)
    assert cache_entry(weights) is None  # written, then the process died before its record
    from mcls.io import file_digest

    weights.with_suffix(".json").write_text(json.dumps({"weights_sha1": file_digest(weights), "epochs": 1}))
    assert cache_entry(weights)["epochs"] == 1
    torch.save({"backbone": {"x": torch.zeros(1)}}, weights)  # replaced behind the record's back
    assert cache_entry(weights) is None
