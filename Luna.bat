@echo off
rem Double-click launcher of the operator window from a source checkout (Windows).
rem Runs Luna.pyw with this checkout's .venv (no console window stays open); see README.md.
if not exist "%~dp0.venv\Scripts\pythonw.exe" goto novenv
start "" "%~dp0.venv\Scripts\pythonw.exe" "%~dp0Luna.pyw" %*
exit /b 0
:novenv
echo Luna: no .venv in "%~dp0" - create it first: README.md, section "Windows from source".
pause
exit /b 1
