"""darkroom.catalogs"""
