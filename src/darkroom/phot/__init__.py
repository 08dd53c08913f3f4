"""darkroom.phot"""
