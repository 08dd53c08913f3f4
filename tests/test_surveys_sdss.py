"""SDSS frames and cutout cubes against a local stand-in for the SDSS archive serving sdss-frames-m2
(a 404 for one band, the empty photoObj as an empty reply); never the internet."""

from __future__ import annotations

import hashlib
import re
import threading

import h5py
import numpy as np
import pytest
from astropy.table import Table
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Response

from darkroom.config import DarkroomConfig
from darkroom.maskbits import MaskBit
from darkroom.pipeline.cutouts import run_cutouts
from darkroom.pipeline.run import all_stages
from darkroom.pipeline.runner import run_stage
from darkroom.pipeline.sdss import run_sdss
from darkroom.pipeline.survey_targets import import_targets
from darkroom.repo.models import Download, Provenance
from darkroom.repo.registry import Registry
from darkroom.surveys.cutouts import read_cube
from darkroom.surveys.sdss import read_fpm_mask, read_frame
from darkroom.surveys.settings import SurveysConfig

BRIGHT = (323.342574, -0.682047)  # MANIFEST: a bright star of field 136
FIELD_137 = (323.4926112298258, -0.7339760466872005)  # centre of the next field (photoField RA, DEC)


def _small_frame(ra: float, dec: float, band: str) -> bytes:
    """A 64 x 64 bzip2-compressed stand-in frame (TAN WCS, 0.396"/px) with a star at its centre."""
    import bz2
    import io

    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [32.5, 32.5]  # 1-based: the centre is 0-based pixel (31.5, 31.5)
    wcs.wcs.cdelt = [-0.396 / 3600, 0.396 / 3600]
    yy, xx = np.mgrid[:64, :64]
    data = (np.exp(-((xx - 31.5) ** 2 + (yy - 31.5) ** 2) / 4.0) * 100).astype(np.float32)
    header = wcs.to_header()
    header["FILTER"], header["TAI"] = band, 4507683881.19
    buf = io.BytesIO()
    fits.PrimaryHDU(data, header=header).writeto(buf)
    return bz2.compress(buf.getvalue())


class Sas:
    """Answers like the Science Archive Server: field 136's frames and its empty photoObj; for
    field 137 small stand-in frames for u, g, r, i and a 404 for z (and for its photoObj)."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request) -> Response:
        name = request.path.rsplit("/", 1)[-1]
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        assert request.path.startswith(
            ("/sas/dr17/eboss/photoObj/", "/sas/dr17/eboss/photo/redux/301/2583/objcs/2/")
        )
        if name.startswith("fpM-") and "-0136" in name:  # served gzip-compressed, as the archive does
            import gzip

            return Response(gzip.compress((self.folder / name.replace(".fit.gz", ".fits")).read_bytes()))
        if "-0137" in name:
            if name.startswith(("frame-z", "photoObj", "fpM")):
                return Response("Not Found", status=404)
            return Response(_small_frame(*FIELD_137, name[6]), content_type="application/octet-stream")
        path = self.folder / name
        if not path.is_file():
            return Response("Not Found", status=404)
        return Response(path.read_bytes(), content_type="application/octet-stream")


@pytest.fixture
def sas_server():
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def edge_target(data_dir):
    """A position 10 px inside the left edge of the r frame (0-based x = 10)."""
    import bz2

    from astropy.io import fits
    from astropy.wcs import WCS

    with bz2.open(data_dir / "sdss-frames-m2" / "frame-r-002583-2-0136.fits.bz2") as fh:
        header = fits.Header.fromfile(fh)  # the header only: no need to expand the whole frame
    world = WCS(header).pixel_to_world(10.0, 700.0)
    return float(world.ra.deg), float(world.dec.deg)


def _repo(tmp_path, edge):
    root = tmp_path / "repo"
    root.mkdir()
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    registry.upgrade()
    rows = [("bright", *BRIGHT), ("edge", *edge), ("next", *FIELD_137), ("nowhere", 10.0, 10.0)]
    t = Table(rows=rows, names=("name", "ra_deg", "dec_deg"))
    for col in ("epoch_jyear", "parallax_mas"):
        t[col] = np.nan
    t["pmra_masyr"] = 0.0
    t["pmdec_masyr"] = 0.0
    import_targets(registry, t, catalog="m2")
    return root, registry


def _config(tmp_path, url, data_dir, **sdss) -> SurveysConfig:
    return SurveysConfig.model_validate(
        {
            "cache_dir": str(tmp_path / "cache"),
            "sdss": {
                "base_url": url,
                "field_table": [str(data_dir / "sdss-frames-m2" / "photoField-002583-2.fits")],
                "http": {
                    "timeout_s": 20,
                    "max_attempts": 2,
                    "backoff_s": 0.05,
                    "concurrency": 4,
                    "rate_per_s": 500,
                },
                **sdss,
            },
        }
    )


@pytest.mark.slow
def test_sdss_frames_and_cubes_through_each_bands_wcs(tmp_path, sas_server, data_dir, edge_target):
    folder = data_dir / "sdss-frames-m2"
    sas = Sas(folder)
    sas_server.expect_request(re.compile("^/sas/.*")).respond_with_handler(sas)
    root, registry = _repo(tmp_path, edge_target)
    config = _config(tmp_path, sas_server.url_for("/sas"), data_dir)
    fields, files = run_sdss(root, registry, config)
    assert fields.counts == {"done": 3, "empty": 1}
    # 136: 5 frames + 5 fpM done, photoObj empty; 137: 4 frames done, z frame, photoObj, 5 fpM 404
    assert files.counts == {"done": 14, "empty": 8}, files.counts
    with registry.session() as s:
        rows = {(d.survey, d.key): d for d in s.scalars(select(Download))}
    assert rows[("sdss-field", "m2/nowhere")].reason == "no SDSS field covers the target"
    assert rows[("sdss-field", "m2/bright")].meta["fields"] == [[2583, 301, 2, 136]]
    assert rows[("sdss-field", "m2/next")].meta["fields"] == [[2583, 301, 2, 137]]
    z137 = rows[("sdss", "frame-z-002583-2-0137.fits.bz2")]
    assert z137.state == "empty" and z137.reason == "not in the archive (HTTP 404)"
    obj = rows[("sdss", "photoObj-002583-2-0136.fits")]
    assert obj.state == "empty" and obj.reason == "photoObj file holds no objects" and obj.n_rows == 0
    for band in "ugriz":  # kept compressed, byte for byte
        row = rows[("sdss", f"frame-{band}-002583-2-0136.fits.bz2")]
        source = (folder / f"frame-{band}-002583-2-0136.fits.bz2").read_bytes()
        assert row.state == "done" and row.path.endswith(".fits.bz2") and "/sdss/dr17/301/2583/2/" in row.path
        assert row.sha256 == hashlib.sha256(source).hexdigest()
    # a second run asks nothing again
    n_calls = sum(sas.calls.values())
    again = run_sdss(root, registry, config)
    assert [r.n_planned for r in again] == [0, 0] and sum(sas.calls.values()) == n_calls

    out = tmp_path / "cubes"
    report = run_cutouts(root, registry, config, out_dir=out, size=32, bands="ugriz", workers=2)
    assert report.n_targets == 3 and report.n_written == 3 and not report.failures
    cube, mask, header = read_cube(out / "cubes" / "ra323" / "m2_bright.fits")
    assert cube.shape == (5, 32, 32) and header["BANDS"] == "ugriz" and not (mask & MaskBit.NO_DATA).any()
    for b in range(5):  # MANIFEST: the peak at (15 +- 1, 15 +- 1) in all five bands
        y, x = np.unravel_index(np.nanargmax(cube[b]), cube[b].shape)
        assert abs(x - 15) <= 1 and abs(y - 15) <= 1, ("ugriz"[b], x, y)
    # the bands are cut at different pixels: by pixel instead they would be misaligned
    xs = [header[f"X_{b.upper()}"] for b in "ugriz"]
    assert max(xs) - min(xs) > 4
    edge, edge_mask, _ = read_cube(out / "cubes" / f"ra{int(edge_target[0]):03d}" / "m2_edge.fits")
    nodata = (edge_mask & MaskBit.NO_DATA) > 0  # fpM bits (SAT, CR, INTRP) may sit on valid pixels
    assert nodata.any() and not nodata.all()
    assert np.all(np.isnan(edge[nodata])) and np.all(np.isfinite(edge[~nodata]))
    assert nodata[2, :, :5].all() and not nodata[2, :, 10:].any()  # r: 10 px in, stamp centre at 15.5
    nxt, nxt_mask, _ = read_cube(out / "cubes" / "ra323" / "m2_next.fits")
    assert nxt_mask[4].all() and not nxt_mask[:4].any()  # z of field 137 is missing
    for b in range(4):
        y, x = np.unravel_index(np.nanargmax(nxt[b]), nxt[b].shape)
        assert abs(x - 15.5) <= 0.5 and abs(y - 15.5) <= 0.5
    index = Table.read(out / "index.csv")
    assert list(index["name"]) == ["bright", "edge", "next"]
    missing = [str(v) if v is not np.ma.masked else "" for v in index["bands_missing"]]
    assert missing == ["", "", "z"]
    with h5py.File(out / "cubes.h5") as h5:
        assert h5["cubes"].shape == (3, 5, 32, 32) and h5.attrs["bands"] == "ugriz"
        np.testing.assert_array_equal(h5["cubes"][0], cube)
        assert [n.decode() for n in h5["names"][:]] == ["m2/bright", "m2/edge", "m2/next"]
    # the same steps as declared stages of darkroom run (family survey, thread executor): nothing
    # left to download, one cutouts unit that finds every cube there
    full = DarkroomConfig.model_validate(
        {
            "run": {"families": ["survey"]},
            "surveys": {
                **config.model_dump(mode="json"),
                "run": ["sdss", "cutouts"],
                "cutouts": {"out_dir": str(out)},
            },
        }
    )
    stages = all_stages(root, full)
    assert [st.name for st in stages] == ["sdss_fields", "sdss", "cutouts"]
    assert [st.executor for st in stages] == ["thread", "thread", "default"]
    with registry.session() as s:  # darkroom survey sdss recorded the provenances darkroom run uses
        recorded = dict(s.execute(select(Provenance.stage, Provenance.id)).all())
    assert recorded == {st.name: st.provenance_id for st in stages[:2]}
    reports = [run_stage(registry, st) for st in stages]
    assert [r.n_planned for r in reports] == [0, 0, 1] and reports[2].n_done == 1 and not reports[2].failures
    # resumable: a second run writes nothing new, a removed cube is made again
    (out / "cubes" / "ra323" / "m2_next.fits").unlink()
    again = run_cutouts(root, registry, config, out_dir=out, size=32, bands="ugriz", workers=2)
    assert again.n_existing == 2 and again.n_written == 1
    registry.dispose()


def test_fields_through_the_search_service(tmp_path, sas_server, data_dir, edge_target):
    reply = "#Table1\nrun,rerun,camcol,field,raMin,raMax,decMin,decMax\n2583,301,2,136,323.26095,323.42474,-0.84665,-0.62142\n"
    asked = []

    def search(request):
        asked.append(request.args["cmd"])
        ra = float(request.args["cmd"].split("raMax >= ")[1].split(" ")[0].rstrip(")"))
        return Response(
            reply if 323 < ra < 324 else "#Table1\nrun,rerun,camcol,field,raMin,raMax,decMin,decMax\n"
        )

    sas_server.expect_request("/dr17/SkyServerWS/SearchTools/SqlSearch").respond_with_handler(search)
    root, registry = _repo(tmp_path, edge_target)
    config = _config(
        tmp_path,
        sas_server.url_for("/sas"),
        data_dir,
        field_table=[],
        search_url=sas_server.url_for("/dr17"),
        photoobj=False,
        bands=[],
    )
    fields, files = run_sdss(root, registry, config)
    assert len(asked) == 4 and "FROM Field" in asked[0]
    # 'next' gets field 136's box back from the service, but it lies outside that box
    assert fields.counts == {"done": 2, "empty": 2} and files.n_planned == 0
    registry.dispose()


def test_fpm_mask_marks_saturated_pixels_of_the_frame(data_dir):
    folder = data_dir / "sdss-frames-m2"
    image, _, _ = read_frame(folder / "frame-r-002583-2-0136.fits.bz2")
    bits = read_fpm_mask(folder / "fpM-002583-r2-0136.fits")
    assert bits.shape == image.shape == (1489, 2048)
    sat = (bits & MaskBit.SAT) > 0
    # spans decoded in the right place: saturated pixels are the bright cores of stars
    assert 1000 < sat.sum() < 0.01 * sat.size
    assert np.median(image[sat]) > 100 * np.median(image) and np.median(image[sat]) > np.percentile(image, 99)
    assert ((bits & MaskBit.CR) > 0).any() and ((bits & MaskBit.INTRP) > 0).any()
