"""darkroom.instruments"""
