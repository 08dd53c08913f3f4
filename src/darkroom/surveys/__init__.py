"""darkroom.surveys"""
