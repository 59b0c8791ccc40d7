"""The morning report: what a run recorded (traces), its pictures (plots), the failure
categories (taxonomy), the per-board table and the Allure 3 build (build)."""
