"""darkroom.pipeline"""
