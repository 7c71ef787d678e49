from setuptools import setup

setup(cffi_modules=["gradbench/_cbuild.py:ffibuilder"])
