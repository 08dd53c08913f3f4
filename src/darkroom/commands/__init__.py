"""darkroom.commands"""
