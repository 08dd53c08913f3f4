"""darkroom.astrom"""
