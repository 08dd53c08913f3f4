"""darkroom.imaging"""
