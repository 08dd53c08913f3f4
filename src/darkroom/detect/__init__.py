"""darkroom.detect"""
