-- Auto-forward every stable series to the SYNTH modality, except the synthetic series
-- SYNTH itself stored here (their RemoteAET is SYNTH), so nothing loops.
-- Orthanc 1.10's SendToModality takes instance IDs only; the REST call takes a series.
function OnStableSeries(seriesId, tags, metadata)
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local first = series['Instances'][1]
  if first ~= nil then
    local ok, aet = pcall(RestApiGet, '/instances/' .. first .. '/metadata/RemoteAET')
    if ok and aet == 'SYNTH' then
      return
    end
  end
  RestApiPost('/modalities/SYNTH/store',
              DumpJson({Resources = {seriesId}, Asynchronous = true}, true))
end
