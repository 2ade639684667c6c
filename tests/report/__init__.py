"""Tests of server/report: report.json, the page, every privacy sentence, asked vs applied."""
