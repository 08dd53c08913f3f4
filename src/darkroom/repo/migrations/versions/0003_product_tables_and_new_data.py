"""product tables, targets, survey downloads, light curves, analysis, coadds

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 12:01:37.832649
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "target",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("catalog", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ra_deg", sa.Float(), nullable=False),
        sa.Column("dec_deg", sa.Float(), nullable=False),
        sa.Column("epoch_jyear", sa.Float(), nullable=True),
        sa.Column("pmra_masyr", sa.Float(), nullable=True),
        sa.Column("pmdec_masyr", sa.Float(), nullable=True),
        sa.Column("parallax_mas", sa.Float(), nullable=True),
        sa.Column("mags", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_target")),
        sa.UniqueConstraint("catalog", "name", name=op.f("uq_target_catalog_name")),
    )
    with op.batch_alter_table("target", schema=None) as batch_op:
        batch_op.create_index("ix_target_radec", ["dec_deg", "ra_deg"], unique=False)

    op.create_table(
        "coadd",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("field", sa.String(length=128), nullable=True),
        sa.Column("filter", sa.String(length=32), nullable=True),
        sa.Column("night", sa.String(length=10), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("n_inputs", sa.Integer(), nullable=False),
        sa.Column("exptime_s", sa.Float(), nullable=True),
        sa.Column("mjd_start", sa.Float(), nullable=True),
        sa.Column("mjd_end", sa.Float(), nullable=True),
        sa.Column("mjd_mid", sa.Float(), nullable=True),
        sa.Column("wcs", sa.JSON(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_coadd_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coadd")),
        sa.UniqueConstraint("provenance_id", "key", name=op.f("uq_coadd_provenance_id_key")),
    )
    with op.batch_alter_table("coadd", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_coadd_field"), ["field"], unique=False)
        batch_op.create_index(batch_op.f("ix_coadd_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "download",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("survey", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("n_rows", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("fetched_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["target_id"], ["target.id"], name=op.f("fk_download_target_id_target")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download")),
        sa.UniqueConstraint("survey", "key", name=op.f("uq_download_survey_key")),
    )
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_download_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_download_survey"), ["survey"], unique=False)
        batch_op.create_index(batch_op.f("ix_download_target_id"), ["target_id"], unique=False)

    op.create_table(
        "association",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("field", sa.String(length=128), nullable=True),
        sa.Column("segment", sa.Integer(), nullable=True),
        sa.Column("n_matched", sa.Integer(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_association_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_association_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_association")),
        sa.UniqueConstraint("image_id", "provenance_id", name=op.f("uq_association_image_id_provenance_id")),
    )
    with op.batch_alter_table("association", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_association_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_association_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "astrom_solution",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=True),
        sa.Column("wcs", sa.JSON(), nullable=False),
        sa.Column("n_matches", sa.Integer(), nullable=True),
        sa.Column("rms_arcsec", sa.Float(), nullable=True),
        sa.Column("flag", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_astrom_solution_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_astrom_solution_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_astrom_solution")),
        sa.UniqueConstraint(
            "image_id", "provenance_id", name=op.f("uq_astrom_solution_image_id_provenance_id")
        ),
    )
    with op.batch_alter_table("astrom_solution", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_astrom_solution_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_astrom_solution_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "coadd_input",
        sa.Column("coadd_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["coadd_id"], ["coadd.id"], name=op.f("fk_coadd_input_coadd_id_coadd"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], name=op.f("fk_coadd_input_image_id_image")),
        sa.PrimaryKeyConstraint("coadd_id", "image_id", name=op.f("pk_coadd_input")),
    )
    op.create_table(
        "image_quality",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("fwhm_pix", sa.Float(), nullable=True),
        sa.Column("ellipticity", sa.Float(), nullable=True),
        sa.Column("sky_adu", sa.Float(), nullable=True),
        sa.Column("sky_rms_adu", sa.Float(), nullable=True),
        sa.Column("n_sources", sa.Integer(), nullable=True),
        sa.Column("flag", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_image_quality_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_image_quality_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_quality")),
        sa.UniqueConstraint(
            "image_id", "provenance_id", name=op.f("uq_image_quality_image_id_provenance_id")
        ),
    )
    with op.batch_alter_table("image_quality", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_quality_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_quality_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "lightcurve",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("survey", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("band", sa.String(length=32), nullable=True),
        sa.Column("season", sa.String(length=32), nullable=True),
        sa.Column("time_scale", sa.String(length=16), nullable=False),
        sa.Column("mjd_start", sa.Float(), nullable=True),
        sa.Column("mjd_end", sa.Float(), nullable=True),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("n_flagged", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_lightcurve_provenance_id_provenance")
        ),
        sa.ForeignKeyConstraint(["source_id"], ["source.id"], name=op.f("fk_lightcurve_source_id_source")),
        sa.ForeignKeyConstraint(["target_id"], ["target.id"], name=op.f("fk_lightcurve_target_id_target")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lightcurve")),
        sa.UniqueConstraint("provenance_id", "key", name=op.f("uq_lightcurve_provenance_id_key")),
    )
    with op.batch_alter_table("lightcurve", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lightcurve_provenance_id"), ["provenance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lightcurve_source_id"), ["source_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lightcurve_target_id"), ["target_id"], unique=False)

    op.create_table(
        "photcal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("band", sa.String(length=32), nullable=True),
        sa.Column("ref_column", sa.String(length=64), nullable=True),
        sa.Column("zp", sa.Float(), nullable=True),
        sa.Column("zp_err", sa.Float(), nullable=True),
        sa.Column("colour_term", sa.Float(), nullable=True),
        sa.Column("mag_limit", sa.Float(), nullable=True),
        sa.Column("n_stars", sa.Integer(), nullable=True),
        sa.Column("flag", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_photcal_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_photcal_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_photcal")),
        sa.UniqueConstraint("image_id", "provenance_id", name=op.f("uq_photcal_image_id_provenance_id")),
    )
    with op.batch_alter_table("photcal", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_photcal_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_photcal_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "properties",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("object_key", sa.String(length=128), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("n_epochs", sa.Integer(), nullable=False),
        sa.Column("period_d", sa.Float(), nullable=True),
        sa.Column("period_fap", sa.Float(), nullable=True),
        sa.Column("best_snr", sa.Float(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_properties_provenance_id_provenance")
        ),
        sa.ForeignKeyConstraint(["source_id"], ["source.id"], name=op.f("fk_properties_source_id_source")),
        sa.ForeignKeyConstraint(["target_id"], ["target.id"], name=op.f("fk_properties_target_id_target")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_properties")),
        sa.UniqueConstraint(
            "provenance_id", "object_key", name=op.f("uq_properties_provenance_id_object_key")
        ),
    )
    with op.batch_alter_table("properties", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_properties_provenance_id"), ["provenance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_properties_source_id"), ["source_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_properties_target_id"), ["target_id"], unique=False)

    op.create_table(
        "source_catalog",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("n_sources", sa.Integer(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_source_catalog_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_source_catalog_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_catalog")),
        sa.UniqueConstraint(
            "image_id", "provenance_id", name=op.f("uq_source_catalog_image_id_provenance_id")
        ),
    )
    with op.batch_alter_table("source_catalog", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_source_catalog_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_source_catalog_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "transparency",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("flag", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_utc", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_transparency_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_transparency_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transparency")),
        sa.UniqueConstraint("image_id", "provenance_id", name=op.f("uq_transparency_image_id_provenance_id")),
    )
    with op.batch_alter_table("transparency", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transparency_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_transparency_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "injection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("lightcurve_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("mjd_peak", sa.Float(), nullable=True),
        sa.Column("duration_d", sa.Float(), nullable=True),
        sa.Column("peak_mag", sa.Float(), nullable=True),
        sa.Column("snr", sa.Float(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("recovered", sa.Boolean(), nullable=False),
        sa.Column("detection_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["lightcurve_id"],
            ["lightcurve.id"],
            name=op.f("fk_injection_lightcurve_id_lightcurve"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_injection_provenance_id_provenance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_injection")),
    )
    with op.batch_alter_table("injection", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_injection_lightcurve_id"), ["lightcurve_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_injection_provenance_id"), ["provenance_id"], unique=False)

    op.create_table(
        "detection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provenance_id", sa.String(length=32), nullable=False),
        sa.Column("finder", sa.String(length=64), nullable=False),
        sa.Column("lightcurve_id", sa.Integer(), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("mjd", sa.Float(), nullable=True),
        sa.Column("duration_d", sa.Float(), nullable=True),
        sa.Column("peak_mag", sa.Float(), nullable=True),
        sa.Column("snr", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("injection_id", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["image.id"], name=op.f("fk_detection_image_id_image")),
        sa.ForeignKeyConstraint(
            ["injection_id"], ["injection.id"], name=op.f("fk_detection_injection_id_injection")
        ),
        sa.ForeignKeyConstraint(
            ["lightcurve_id"],
            ["lightcurve.id"],
            name=op.f("fk_detection_lightcurve_id_lightcurve"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"], ["provenance.id"], name=op.f("fk_detection_provenance_id_provenance")
        ),
        sa.ForeignKeyConstraint(["source_id"], ["source.id"], name=op.f("fk_detection_source_id_source")),
        sa.ForeignKeyConstraint(["target_id"], ["target.id"], name=op.f("fk_detection_target_id_target")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detection")),
    )
    with op.batch_alter_table("detection", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_detection_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_detection_lightcurve_id"), ["lightcurve_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_detection_provenance_id"), ["provenance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_detection_simulated"), ["simulated"], unique=False)
        batch_op.create_index(batch_op.f("ix_detection_target_id"), ["target_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("detection", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_detection_target_id"))
        batch_op.drop_index(batch_op.f("ix_detection_simulated"))
        batch_op.drop_index(batch_op.f("ix_detection_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_detection_lightcurve_id"))
        batch_op.drop_index(batch_op.f("ix_detection_image_id"))

    op.drop_table("detection")
    with op.batch_alter_table("injection", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_injection_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_injection_lightcurve_id"))

    op.drop_table("injection")
    with op.batch_alter_table("transparency", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transparency_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_transparency_image_id"))

    op.drop_table("transparency")
    with op.batch_alter_table("source_catalog", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_source_catalog_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_source_catalog_image_id"))

    op.drop_table("source_catalog")
    with op.batch_alter_table("properties", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_properties_target_id"))
        batch_op.drop_index(batch_op.f("ix_properties_source_id"))
        batch_op.drop_index(batch_op.f("ix_properties_provenance_id"))

    op.drop_table("properties")
    with op.batch_alter_table("photcal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_photcal_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_photcal_image_id"))

    op.drop_table("photcal")
    with op.batch_alter_table("lightcurve", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lightcurve_target_id"))
        batch_op.drop_index(batch_op.f("ix_lightcurve_source_id"))
        batch_op.drop_index(batch_op.f("ix_lightcurve_provenance_id"))

    op.drop_table("lightcurve")
    with op.batch_alter_table("image_quality", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_quality_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_image_quality_image_id"))

    op.drop_table("image_quality")
    op.drop_table("coadd_input")
    with op.batch_alter_table("astrom_solution", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_astrom_solution_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_astrom_solution_image_id"))

    op.drop_table("astrom_solution")
    with op.batch_alter_table("association", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_association_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_association_image_id"))

    op.drop_table("association")
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_target_id"))
        batch_op.drop_index(batch_op.f("ix_download_survey"))
        batch_op.drop_index(batch_op.f("ix_download_state"))

    op.drop_table("download")
    with op.batch_alter_table("coadd", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_coadd_provenance_id"))
        batch_op.drop_index(batch_op.f("ix_coadd_field"))

    op.drop_table("coadd")
    with op.batch_alter_table("target", schema=None) as batch_op:
        batch_op.drop_index("ix_target_radec")

    op.drop_table("target")
