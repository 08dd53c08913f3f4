"""product tables, targets, survey downloads, light curves, analysis, coadds

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 12:01:37.832649
"""

from __future__ import annotations

from datetime import UTC, datetime

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

    # The Image row keeps only what calibration made (see _move_image_slots).
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("calib", sa.JSON(), nullable=True))
    _move_image_slots()
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.alter_column("calib", existing_type=sa.JSON(), nullable=False)
        for column in ("quality", "quality_flag", "astrom", "astrom_flag", "photcal", "catalog_path"):
            batch_op.drop_column(column)


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("quality_flag", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("astrom", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("astrom_flag", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("photcal", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("catalog_path", sa.Text(), nullable=True))
        batch_op.drop_column("calib")

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


# --- the Image row keeps only what calibration made ---------------------------------------
# Before 0003 the extract, quality, astrometry, associate, photometry and lightcurves stages
# kept their results in JSON slots of the Image row (one provenance at a time). They move to
# the product tables above, keyed by (image, provenance); what calibration made moves from
# quality["calib"] to the new ``calib`` column; then the slots go.

_FIGURES = ("fwhm_pix", "ellipticity", "sky_adu", "sky_rms_adu", "n_sources")


def _move_image_slots() -> None:
    bind = op.get_bind()
    image = sa.table(
        "image",
        sa.column("id", sa.Integer),
        sa.column("quality", sa.JSON),
        sa.column("quality_flag", sa.String),
        sa.column("astrom", sa.JSON),
        sa.column("astrom_flag", sa.String),
        sa.column("photcal", sa.JSON),
        sa.column("catalog_path", sa.Text),
        sa.column("calib", sa.JSON),
    )
    provenance = sa.table(
        "provenance",
        sa.column("id", sa.String),
        sa.column("stage", sa.String),
        sa.column("params", sa.JSON),
        sa.column("code_version", sa.String),
        sa.column("upstream", sa.JSON),
        sa.column("created_utc", sa.DateTime),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    known = set(bind.execute(sa.select(provenance.c.id)).scalars())

    def prov(pid: str | None, stage: str) -> str:
        # A slot written without a provenance id (never by darkroom itself) gets a legacy one.
        pid = pid or f"legacy-{stage}"
        if pid not in known:
            bind.execute(
                provenance.insert().values(
                    id=pid, stage=stage, params={}, code_version="0.0", upstream=[], created_utc=now
                )
            )
            known.add(pid)
        return pid

    def table(name: str, *cols: str) -> sa.TableClause:
        return sa.table(name, *(sa.column(c, sa.JSON if c in ("values", "wcs") else None) for c in cols))

    rows: dict[str, list[dict]] = {
        k: []
        for k in (
            "source_catalog",
            "image_quality",
            "astrom_solution",
            "association",
            "photcal",
            "transparency",
        )
    }
    calib_updates = []
    for r in bind.execute(sa.select(image)).mappings():
        q = dict(r["quality"] or {})
        a = dict(r["astrom"] or {})
        pc = dict(r["photcal"] or {})
        calib_updates.append({"b_id": r["id"], "b_calib": q.get("calib") or {}})
        figures = {k: v for k, v in q.items() if k not in ("calib", "detect", "flag", "poor_reason")}
        if r["catalog_path"]:
            detect = q.get("detect") or {}
            rows["source_catalog"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(detect.get("provenance_id"), "extract"),
                    path=r["catalog_path"],
                    sha256=None,
                    n_sources=figures.get("n_sources"),
                    values=figures,
                    created_utc=now,
                )
            )
        transp = dict(pc.pop("transparency", None) or {})
        assoc = dict(pc.pop("association", None) or {})
        if r["quality_flag"]:
            flag, reason = r["quality_flag"], q.get("poor_reason")
            undo = transp.get("marked_poor")
            if undo and flag == "poor" and reason == undo.get("poor_reason"):
                # the lightcurves stage had marked the frame poor: the quality verdict is what it replaced
                flag, reason = undo.get("previous_flag"), undo.get("previous_reason")
            fl = dict(q.get("flag") or {})
            rows["image_quality"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(fl.pop("provenance_id", None), "quality"),
                    **{k: figures.get(k) for k in _FIGURES},
                    flag=flag,
                    reason=reason or None,
                    values=fl,
                    created_utc=now,
                )
            )
        if r["astrom_flag"]:
            rows["astrom_solution"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(a.get("provenance_id"), "astrometry"),
                    method=a.get("method"),
                    wcs=a.get("wcs") or {},
                    n_matches=a.get("n_matched"),
                    rms_arcsec=a.get("rms_arcsec"),
                    flag=r["astrom_flag"],
                    reason=a.get("reason"),
                    values={k: v for k, v in a.items() if k != "provenance_id"},
                    created_utc=now,
                )
            )
        if assoc:
            rows["association"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(assoc.get("provenance_id"), "associate"),
                    field=assoc.get("field"),
                    segment=None,
                    n_matched=assoc.get("n_matched"),
                    values={k: v for k, v in assoc.items() if k not in ("provenance_id", "field")},
                    created_utc=now,
                )
            )
        if pc.get("provenance_id"):
            rows["photcal"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(pc.get("provenance_id"), "photometry"),
                    band=pc.get("band"),
                    ref_column=pc.get("ref_column"),
                    zp=pc.get("zp"),
                    zp_err=pc.get("zp_err"),
                    colour_term=pc.get("colour_term"),
                    mag_limit=pc.get("mag_limit"),
                    n_stars=pc.get("n_used"),
                    flag=pc.get("mag_system"),
                    reason=pc.get("reason"),
                    values={k: v for k, v in pc.items() if k != "provenance_id"},
                    created_utc=now,
                )
            )
        if transp:
            low = bool(transp.get("low"))
            of_clear = transp.get("of_clear")
            rows["transparency"].append(
                dict(
                    image_id=r["id"],
                    provenance_id=prov(transp.get("provenance_id"), "lightcurves"),
                    value=transp.get("value"),
                    flag="poor" if low else "clear",
                    reason=(
                        None
                        if not low
                        else "low transparency"
                        if of_clear is None
                        else f"low transparency ({of_clear:.2f} of clear)"
                    ),
                    values={k: v for k, v in transp.items() if k in ("of_clear", "low")},
                    created_utc=now,
                )
            )
    for name, items in rows.items():
        if items:
            bind.execute(table(name, *items[0]).insert(), items)
    if calib_updates:
        bind.execute(
            image.update().where(image.c.id == sa.bindparam("b_id")).values(calib=sa.bindparam("b_calib")),
            calib_updates,
        )
