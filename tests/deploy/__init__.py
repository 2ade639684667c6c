"""Tests of deploy/: real SuperLink and SuperNodes, the site launcher and its checks."""
