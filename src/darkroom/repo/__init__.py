"""darkroom.repo"""
